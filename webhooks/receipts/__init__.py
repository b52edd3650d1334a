"""Provider receipts: one module per provider, each verifying the provider's own signature.

A bad or missing signature is 401 and changes nothing. A receipt about a message we
know is recorded and signalled to the run that sent it (by provider message id).
"""

from __future__ import annotations

from fastapi import APIRouter

from webhooks.receipts import mailgun, telegram, twilio, viber, vk, whatsapp

router = APIRouter(tags=["receipts"])
for _module in (mailgun, twilio, telegram, whatsapp, viber, vk):
    router.include_router(_module.router)
