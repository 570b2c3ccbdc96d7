"""threezone.readers: one pure function per channel, untrusted raw bytes -> SanitizedMessage."""

from threezone.readers.email import EmailLimits, read_email

__all__ = ["EmailLimits", "read_email"]
