"""Replies in the Vosk server protocol, built from the pipeline's events.

A Vosk server answers every audio message with exactly one JSON message (lock-step clients
such as vosk-server's ``test.py`` send a chunk, then wait for that one reply):

* ``{"partial": "current words"}`` while an utterance is open, or
* ``{"result": [{"word", "start", "end", "conf"}, ...], "text": "the words"}`` when one ended
  (``result`` always present, empty when there are no words, as in Vosk's own examples);

and answers ``{"eof": 1}`` (and ``{"reset": 1}``) with one final result. Our finals are
produced by the pipeline's endpointer, possibly several per audio message or between
replies; they queue here and go out one per reply, and whatever is still queued at eof
is joined into the last result, so a client that reads one message per message it sent
sees every word.
"""

from __future__ import annotations

import json
from collections import deque

from decoders.events import Final, Partial


def _dumps(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def partial_message(text: str) -> str:
    """``{"partial": text}``."""
    return _dumps({"partial": text})


def result_message(finals: list[Final]) -> str:
    """One Vosk result for one or more finished utterances (``{"result": [], "text": ""}`` for none)."""
    text = " ".join(f.text for f in finals if f.text)
    words = [w.to_dict() for f in finals for w in f.words]  # {"word","start","end","conf"}
    return _dumps({"result": words, "text": text})


class VoskReplies:
    """Per-session state that turns pipeline events into Vosk replies."""

    def __init__(self) -> None:
        self.partial = ""                    # text of the open utterance
        self.finals: deque[Final] = deque()  # finished utterances not yet sent

    def observe(self, event) -> None:
        """Take one pipeline event (others than partial/final are not part of Vosk's protocol)."""
        if isinstance(event, Partial):
            self.partial = event.text
        elif isinstance(event, Final):
            self.finals.append(event)
            self.partial = ""

    def reply_to_audio(self) -> str:
        """The one reply to an audio message: a finished utterance if one waits, else the partial."""
        if self.finals:
            return result_message([self.finals.popleft()])
        return partial_message(self.partial)

    def reply_final(self) -> str:
        """The reply to eof / reset: everything not yet sent, as one result."""
        message = result_message(list(self.finals))
        self.finals.clear()
        self.partial = ""
        return message
