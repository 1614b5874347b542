#!/usr/bin/python3
"""Renders chat templates with Jinja2 the way transformers' apply_chat_template(tokenize=False)
does, as the reference for hooklens' own renderer.

Usage: render_chat_templates.py CASES.json OUT.json
  CASES.json: [{"template": str, "messages": [{"role", "content"}], "special_tokens": {name: text},
  "add_generation_prompt": bool}, ...]. OUT.json: per case {"text": str} or {"error": str}.
"""
import json
import sys

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise TemplateError(message)


def main():
    cases = json.load(open(sys.argv[1], encoding="utf-8"))
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    out = []
    for case in cases:
        try:
            template = env.from_string(case["template"])
            text = template.render(messages=case["messages"], add_generation_prompt=case["add_generation_prompt"],
                                   **case["special_tokens"])
            out.append({"text": text})
        except Exception as e:  # the test only needs to know that Jinja refused too
            out.append({"error": f"{type(e).__name__}: {e}"})
    json.dump(out, open(sys.argv[2], "w", encoding="utf-8"), ensure_ascii=False)


if __name__ == "__main__":
    main()
