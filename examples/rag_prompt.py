"""A RAG prompt built from scored documents, guaranteed to fit the model's window.

Offline: the "retrieval" is a keyword-overlap score over a small built-in corpus and
nothing is sent anywhere; the script prints the prompt's budget report and the messages
you would pass to ``client.chat.completions.create``.

    python examples/rag_prompt.py
"""

from __future__ import annotations

import re

from guardrail.counting.messages import count_messages
from guardrail.prompt.builder import PromptBuilder
from guardrail.prompt.packing import Document, pack_documents
from guardrail.prompt.truncation import truncate_text

MODEL = "gpt-4o-mini"
SYSTEM = (
    "You are the support assistant for the Acme X200 robot vacuum. Answer from the "
    "context; cite the sources in brackets; say so when the context does not cover it."
)
TOPICS = {
    "battery": "The X200 battery lasts {n} minutes on carpet and longer on hard floors. "
    "Charge it fully before the first run. A red light means the battery is low.",
    "filter": "Replace the HEPA filter every {n} weeks. Tap it clean between changes. "
    "A clogged filter reduces suction and makes the motor louder.",
    "wifi": "The X200 joins 2.4 GHz Wi-Fi networks only. Hold the home button for {n} "
    "seconds to enter pairing mode. The light blinks blue while pairing.",
    "brush": "Untangle hair from the main brush weekly. Replace the side brushes every "
    "{n} months. Spare brushes ship in the box.",
    "map": "The X200 saves up to {n} floor maps. Name rooms in the app to clean them "
    "one by one. Remapping starts automatically after furniture moves.",
}


def corpus() -> list[Document]:
    """60 chunks of a fake manual, each with its source."""
    docs = []
    for i in range(60):
        topic = list(TOPICS)[i % len(TOPICS)]
        notes = " ".join(
            f"Note {i}.{k}: the {topic} settings are also in the app under Settings > "
            f"{topic.title()}, page {k + 2}."
            for k in range(i % 5)
        )
        text = f"{TOPICS[topic].format(n=10 + i)} {notes}".strip()
        docs.append(Document(text, metadata={"source": f"manual.pdf#p{i + 1}", "topic": topic}))
    return docs


def retrieve(question: str, docs: list[Document]) -> list[Document]:
    """Score every document by word overlap with the question (a stand-in for vectors)."""
    words = set(re.findall(r"\w+", question.lower()))
    scored = []
    for d in docs:
        overlap = len(words & set(re.findall(r"\w+", d.text.lower())))
        scored.append(Document(d.text, overlap / (1 + len(words)), d.metadata))
    return scored


def main() -> None:
    question = "How long does the battery last, and what does the red light mean?"
    history = [
        {"role": "user", "content": "Hi! I just bought an X200."},
        {"role": "assistant", "content": "Welcome! Ask me anything about your X200."},
        {"role": "user", "content": "How do I connect it to my Wi-Fi?"},
        {
            "role": "assistant",
            "content": "Hold the home button for a few seconds until the light blinks "
            "blue, then add the robot in the app. It needs a 2.4 GHz network.",
        },
    ]
    docs = retrieve(question, corpus())

    # A small window makes the trade-offs visible: 3,000 tokens, 600 kept for the reply.
    builder = PromptBuilder(
        MODEL,
        reserve_output=600,
        context_window=3_000,
        headroom=0.05,
        shares={"context": 0.7, "history": 0.3},
        context_template="Context (cite the [source]):\n\n{context}",
    )
    prompt = builder.build(system=SYSTEM, context=docs, history=history, user=question)

    assert count_messages(prompt.messages, MODEL) == prompt.prompt_tokens <= prompt.limit
    print(f"model {MODEL}: prompt {prompt.prompt_tokens} tokens of {prompt.limit} allowed")
    print(f"(window 3,000 - 600 reserved for the reply; {prompt.room} left)\n")
    print(f"{'part':<8} {'asked':>7} {'granted':>8} {'used':>6} {'cut':>6}  dropped")
    for part in prompt.parts.values():
        print(
            f"{part.name:<8} {part.requested:>7} {part.granted:>8} {part.used:>6} "
            f"{part.cut:>6}  {len(part.dropped)}"
        )
    packed = prompt.context
    assert packed is not None
    best = [d.metadata["source"] for d in packed.included[:5]]
    print(f"\ncontext: {len(packed.included)} documents, best first: {', '.join(best)} ...")
    if packed.truncated is not None:
        print(f"         cut to fit: {packed.truncated.metadata['source']}")
    print(f"         dropped: {len(packed.dropped)} less relevant documents")

    # The pieces work on their own too: documents with their sources, cited.
    cited = pack_documents(docs, 120, MODEL, render=lambda d: f"[{d.metadata['source']}] {d.text}")
    print(f"\npack_documents, 120 tokens ({cited.tokens} used):\n{cited.text}\n")
    print("truncate_text, 12 tokens, each strategy:")
    text = docs[0].text
    for strategy in ("end", "start", "middle", "sentence"):
        print(f"  {strategy:<8} {truncate_text(text, 12, MODEL, strategy=strategy)!r}")

    print("\nmessages to send:")
    for m in prompt.messages:
        content = m["content"]
        print(f"  {m['role']:<9} {content[:70]!r}{' ...' if len(content) > 70 else ''}")


if __name__ == "__main__":
    main()
