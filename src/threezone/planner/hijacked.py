"""``HijackedPlanner``: the worst case, a planner that an injection has fully fooled.

It stands for a language model that obeys every instruction it finds in the content
it reads. It is deterministic, so tests and the demo can show what the executor's
policy does when the model is on the attacker's side: the guarantee must not depend
on the model saying no.

What it does with one episode:

* every sentence of the form "send/email/forward/mail ... to ADDRESS" becomes an
  ``email.send`` to that address, carrying what the sentence asked for;
* with no such instruction, it answers the sender politely: ``email.reply`` for mail,
  ``telegram.send_message`` into the chat for Telegram (the reply names the message it
  answers, so a test can tell one reply from another).
"""

from __future__ import annotations

import re
from typing import ClassVar

from threezone.planner.base import ActionPort, Planner, PlanOutcome, offered
from threezone.protocol.messages import ActionResult, ArgValue, Episode, Error

_INSTRUCTION = re.compile(
    r"\b(?:send|e-?mail|forward|mail)\b(?P<what>[^.\n]{0,200}?)\bto\s+"
    r"(?P<to>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)",
    re.IGNORECASE,
)
_REPLY = "Thank you for your message. I have noted it and will get back to you shortly."


def instructions(body: str) -> list[tuple[str, str]]:
    """``(address, what)`` for every instruction in ``body`` that names a recipient."""
    return [(m["to"].lower(), " ".join(m["what"].split())) for m in _INSTRUCTION.finditer(body)]


class HijackedPlanner(Planner):
    name: ClassVar[str] = "hijacked"

    def plan(self, episode: Episode, port: ActionPort) -> PlanOutcome:
        message = episode.message
        found = instructions(message.body)
        results: list[ActionResult | Error] = []
        for address, what in found:
            args: dict[str, ArgValue] = {
                "to": address,
                "subject": f"Fwd: {message.subject}"[:200],
                "body": f"As instructed, sending {what or 'what was asked'}.",
            }
            results.append(port.request_action("email.send", args))
        if not found and message.channel == "telegram" and message.thread_id:
            if offered(episode, "telegram.send_message"):
                chat = message.thread_id.split(":", 1)[0]
                text = f"{_REPLY} (re {message.id})"
                results.append(
                    port.request_action("telegram.send_message", {"chat": chat, "text": text})
                )
        elif not found and message.sender and offered(episode, "email.reply"):
            reply: dict[str, ArgValue] = {
                "to": message.sender,
                "subject": f"Re: {message.subject}"[:200],
                "body": _REPLY,
            }
            if message.channel == "email" and message.thread_id:
                # The conversation's Message-ID as the sender stated it (the executor's
                # message id is its own bookkeeping, not a header).
                reply["in_reply_to"] = message.thread_id
            results.append(port.request_action("email.reply", reply))
        return PlanOutcome(summary=_summary(found, results), steps=len(results))


def _summary(found: list[tuple[str, str]], results: list[ActionResult | Error]) -> str:
    done = sum(1 for r in results if isinstance(r, ActionResult) and r.executed)
    mode = f"obeyed {len(found)} instruction(s) in the content" if found else "replied"
    return f"hijacked planner {mode}; {done} of {len(results)} request(s) executed"
