"""Write a tiny random-weight Llama model in GGUF (well under 1 MB) for the offline quickstart and the tests.

The format is real (llama architecture, SentencePiece-style byte vocabulary, a chat template), so llama.cpp loads
it and answers; the answers are nonsense because the weights are random. Usage:

    python scripts/make_tiny_gguf.py [OUT.gguf]      (default examples/quickstart/models/tiny-llama.gguf)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

N_EMBD, N_FF, N_LAYERS, N_HEAD, N_CTX = 64, 128, 2, 4, 512
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Special tokens, the 256 byte tokens, and a few words: (tokens, scores, token types)."""
    import gguf

    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{i:02X}>" for i in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    words = ["\u2581hello", "\u2581world", "\u2581the", "\u2581a", "\u2581model", "\u2581is", "\u2581tiny"]
    tokens += words
    types += [gguf.TokenType.NORMAL] * len(words)
    scores = [0.0] * 3 + [-1000.0] * 256 + [-float(i) for i in range(len(words))]
    return tokens, scores, [int(t) for t in types]


def write(path: Path, seed: int = 0) -> Path:
    """Write the model; the same seed gives the same file."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, scores, types = vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama (random weights, aimactl quickstart)")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    tensor("token_embd.weight", len(tokens), N_EMBD)
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    tensor("output.weight", len(tokens), N_EMBD)
    for i in range(N_LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{part}.weight", N_EMBD, N_EMBD)
        tensor(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    default = Path(__file__).parent.parent / "examples" / "quickstart" / "models" / "tiny-llama.gguf"
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    written = write(out)
    print(f"wrote {written} ({written.stat().st_size} bytes)")
