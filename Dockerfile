FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir .
ENV DNI_DATA_DIR=/data
EXPOSE 8000
CMD ["dni", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
