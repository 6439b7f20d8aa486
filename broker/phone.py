"""Phone number parsing: every number the broker stores or answers is E.164."""

from __future__ import annotations

import phonenumbers


class InvalidNumber(ValueError):
    def __init__(self, raw: object) -> None:
        super().__init__(f"{raw!r} is not a valid phone number")
        self.raw = raw


def normalize(raw: object, region: str = "US") -> str:
    """Parse `raw` in any common format and return it as E.164, or raise InvalidNumber.

    Accepted: numbers libphonenumber holds valid, and the North American 555 area code
    (fictional numbers such as +1 555 010 0000, used in documentation, demos and the
    sandbox provider), which libphonenumber calls invalid.
    """
    if not isinstance(raw, str) or not 3 <= len(raw) <= 40:
        raise InvalidNumber(raw)
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        raise InvalidNumber(raw) from None
    national = str(parsed.national_number)
    fictional = parsed.country_code == 1 and len(national) == 10 and national.startswith("555")
    if not (phonenumbers.is_valid_number(parsed) or fictional):
        raise InvalidNumber(raw)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
