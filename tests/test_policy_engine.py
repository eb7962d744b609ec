from asyncrl.policy import encode_prompts, load_tokenizer


def test_chat_template_used_when_present(tmp_path):
    from conftest import build_tiny_model_dir

    path = build_tiny_model_dir(tmp_path, chat_template="{% for m in messages %}<s>u:{{ m['content'] }}|{% endfor %}a:")
    tok = load_tokenizer(str(path))
    ids = encode_prompts(tok, ["1+1="])[0]
    assert tok.decode(ids) == "<s>u:1+1=|a:"
    assert encode_prompts(tok, ["1+1="], chat_template="never")[0] == tok("1+1=")["input_ids"]
