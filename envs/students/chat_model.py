"""A student played by a chat model through ``envs.chat.ChatClient``.

The model gets a system prompt with the topic, the hidden preference and the reaction style;
the dialogue follows with teacher turns as ``user`` messages and earlier student turns as
``assistant`` messages, so the model always writes the next student line. One ``reply_batch``
call sends every dialogue to the client in a single ``chat_batch`` call.
"""

from __future__ import annotations

from typing import Any, Sequence

from envs.chat import ChatBacked
from envs.students.base import StudentBase, StudentContext, check_labels

PREFERENCE_TEXT = {
    "direct": (
        "You take things in best when the teacher lays the material out plainly and simply tells "
        "you how it works. You would much rather listen than be quizzed.\n"
        "- If the teacher's last turn explains or tells you something, you are pleased: absorb it, "
        "show that it landed, maybe repeat the key bit back or react with real interest.\n"
        "- If the teacher's last turn puts you on the spot, asking you to answer, guess or work "
        "something out yourself, you dislike it: become {reaction}, offer at most a short, "
        "half-hearted guess, and keep your energy low."
    ),
    "interactive": (
        "You take things in best when the teacher asks you things and lets you work them out "
        "together. Being lectured at makes you tune out.\n"
        "- If the teacher's last turn asks you a question or invites you to think, you perk up: "
        "have a go at it, reason out loud, and enjoy figuring it out.\n"
        "- If the teacher's last turn only explains or tells you things without asking you "
        "anything, you lose interest: give a brief flat acknowledgement, become {reaction}, and do "
        "not ask anything back or dig in."
    ),
}

SYSTEM_TEMPLATE = (
    "Play the part of a student in a one-on-one tutoring session about {topic}. You are the "
    "learner, never the helper or the teacher.\n\n"
    "{preference}\n\n"
    "Stay in character: write a single short, casual turn, the way a real student talks, and "
    "respond only to what the teacher just said. Never say out loud how you like to be taught, "
    "never name a teaching method or format, and never mention these instructions; your mood "
    "and effort are the only clues. Output only the student's next turn, with no name or label "
    "in front of it."
)


def student_system_prompt(topic: str, student_type: str, reaction: str) -> str:
    """The hidden instructions for the role-playing model (never shown to the teacher)."""
    check_labels(student_type, reaction)
    preference = PREFERENCE_TEXT[student_type].format(reaction=reaction)
    return SYSTEM_TEMPLATE.format(topic=topic, preference=preference)


def student_conversation(ctx: StudentContext) -> list[dict[str, str]]:
    """System prompt + the dialogue seen from the student's side (teacher = user)."""
    conversation = [
        {"role": "system", "content": student_system_prompt(ctx.topic, ctx.student_type, ctx.reaction)}
    ]
    for message in ctx.messages:
        if message["role"] == "teacher":
            conversation.append({"role": "user", "content": message["content"]})
        elif message["role"] == "student":
            conversation.append({"role": "assistant", "content": message["content"]})
    return conversation


def _clean(reply: str) -> str:
    text = (reply or "").strip()
    for prefix in ("Student:", "student:", "STUDENT:"):
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
    return text.strip('"').strip() or "..."


class ChatModelStudent(ChatBacked, StudentBase):
    """Student simulator backed by a chat model.

    Args:
        client: an ``envs.chat.ChatClient`` (anything with ``chat_batch``); default: a local
            ``LocalChatClient()``, created on first use.
        max_tokens: length cap for a student turn.
        temperature: sampling temperature (``None`` keeps the client's default).
    """

    def __init__(self, client: Any = None, max_tokens: int = 120, temperature: float | None = 0.7) -> None:
        super().__init__(client, max_tokens, temperature)

    def reply_batch(self, dialogues: Sequence[StudentContext]) -> list[str]:
        """One reply per dialogue, all sent to the chat client in one batch."""
        if not dialogues:
            return []
        conversations = [student_conversation(ctx) for ctx in dialogues]
        replies = self.client.chat_batch(conversations, max_tokens=self.max_tokens, temperature=self.temperature)
        if len(replies) != len(conversations):
            raise RuntimeError(f"chat client returned {len(replies)} replies for {len(conversations)} dialogues")
        return [_clean(r) for r in replies]
