"""SMS length and segment counting (GSM 03.38 7-bit or UCS-2), for cost and validation."""

from __future__ import annotations

from dataclasses import dataclass

# GSM 03.38 basic character set (one septet each).
_GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: escape + char, so two septets each.
_GSM_EXTENDED = set("^{}\\[~]|€\f")


@dataclass(frozen=True)
class SmsInfo:
    """How an SMS text is encoded and billed."""

    encoding: str  # "GSM-7" or "UCS-2"
    length: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int
    per_segment: int

    def describe(self) -> str:
        """e.g. `58 chars, GSM-7, 1 segment (160 per segment)`."""
        plural = "s" if self.segments != 1 else ""
        return f"{self.length} chars, {self.encoding}, {self.segments} segment{plural} ({self.per_segment} per segment)"


def sms_info(text: str) -> SmsInfo:
    """Encoding, length and segment count of `text` as a carrier bills it.

    One GSM-7 SMS holds 160 septets, a concatenated part 153 (the UDH takes 7); any
    character outside GSM 03.38 switches the whole message to UCS-2: 70, or 67 per part.
    """
    if all(ch in _GSM_BASIC or ch in _GSM_EXTENDED for ch in text):
        length = sum(2 if ch in _GSM_EXTENDED else 1 for ch in text)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        # UTF-16 code units: an emoji outside the BMP takes two.
        length = len(text.encode("utf-16-le")) // 2
        single, multi, encoding = 70, 67, "UCS-2"
    if length <= single:
        return SmsInfo(encoding, length, 1 if length else 0, single)
    return SmsInfo(encoding, length, -(-length // multi), multi)
