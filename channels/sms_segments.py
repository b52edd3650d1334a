"""SMS segment counting for the SMS adapters; the model itself is content's (cascade/content/sms.py).

The domain (template checks) counts segments too and must not import a channel module,
so the code lives below both and this name stays for the adapters and their tests.
"""

from cascade.content.sms import SmsInfo, sms_info

__all__ = ["SmsInfo", "sms_info"]
