// Generates the expected outputs of the tokenizer fixtures with @huggingface/tokenizers
// (an independent JavaScript implementation of Hugging Face tokenizers).
//
//   mkdir -p /tmp/tokref && cd /tmp/tokref && npm init -y && npm install @huggingface/tokenizers
//   cp tests/data/tokenizer/make_fixtures.mjs /tmp/tokref/ && cd /tmp/tokref && \
//     node make_fixtures.mjs <repo root> <shared dir>
//
// Writes tests/data/tokenizer/<fixture>/expected.json for every byte-level fixture and
// tests/data/tokenizer/tinystories_plain.json (the tinystories tokenizer.json run as is,
// without transformers' LlamaTokenizer rules).
import fs from "fs";
import path from "path";
import { Tokenizer } from "@huggingface/tokenizers";

const [root, shared] = process.argv.slice(2);
const version = JSON.parse(fs.readFileSync(
    path.join(process.cwd(), "node_modules/@huggingface/tokenizers/package.json"), "utf8")).version;
const dataDir = path.join(root, "tests/data/tokenizer");

const commonTexts = [
  "Hello world",
  "Once upon a time, there was a little girl named Mia.",
  "don't you're I'M we'll they'd it's",
  "Mixed CASE Words AND 's 'S 'Ll 'VE",
  "Numbers 12345 and 3.14159 and 1,000,000",
  "1234567890 12 123 1234",
  "multiple   spaces    here  ",
  "  leading and trailing  ",
  "line one\nline two\n\nline four\r\nwindows",
  "tabs\tand\t\ttabs",
  "\n\n\n",
  "   ",
  "naïve café 🙂 日本語",
  "Ünïcödé ÀÉÎÕÜ ñ ß ø",
  "Привет мир Ελληνικά العربية",
  "emoji 👍🏽👨‍👩‍👧 flags 🇫🇷",
  "a\u00a0non-breaking space and\u3000ideographic",
  "punctuation!!! ??? ... ;;; --- (brackets) [x] {y}",
  "email@example.com https://example.org/path?q=1&r=2",
  "The quick brown fox jumps over the lazy dog. THE END.",
  "x".repeat(300),
  "She said, \"Let's go to the park!\" and they went.",
];

function specialTexts(tokens) {
  const [a, b, c] = [tokens[0], tokens[1] ?? tokens[0], tokens[tokens.length - 1]];
  return [
    `${a}Hello${b}`,
    `special in middle: hello${b}world ${c} done`,
    `${a}${a} twice`,
    `text ${c}`,
  ];
}

function run(tokenizerJson, config, texts) {
  const t = new Tokenizer(tokenizerJson, config);
  return texts.map((text) => {
    const ids = t.encode(text).ids;
    const ids_no_special = t.encode(text, { add_special_tokens: false }).ids;
    const decode = (skip) => (ids.length === 0 ? "" : t.decode(ids, { skip_special_tokens: skip }));
    return {
      text,
      ids,
      ids_no_special,
      decoded: decode(true),
      decoded_with_special: decode(false),
    };
  });
}

for (const name of ["llama3_style", "gpt2_style", "qwen2_style"]) {
  const dir = path.join(dataDir, name);
  const tj = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
  const tc = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
  const texts = commonTexts.concat(specialTexts(tj.added_tokens.map((a) => a.content)));
  const out = { generator: `@huggingface/tokenizers ${version}`, cases: run(tj, tc, texts) };
  fs.writeFileSync(path.join(dir, "expected.json"), JSON.stringify(out, null, 1) + "\n");
}

const tiny = path.join(shared, "models/tinystories-656k/tokenizer.json");
if (fs.existsSync(tiny)) {
  const tj = JSON.parse(fs.readFileSync(tiny, "utf8"));
  const texts = [
    "Once upon a time", "Hello, world!", "  two  spaces", "naïve café 🙂",
    "The end.\nNew line", "a".repeat(40), "It's 3:45 PM; numbers 12345 and symbols #@!",
    "Lily and Ben played in the park.", "tabs\tand\nnewlines", "   ", "Zebra ZOO qxj",
    "Hello<|end_story|>world", "<|start_story|>Once upon a time",
  ];
  const out = {
    generator: `@huggingface/tokenizers ${version}`,
    source: "shared/models/tinystories-656k/tokenizer.json without tokenizer_config.json",
    cases: run(tj, { clean_up_tokenization_spaces: false }, texts),
  };
  fs.writeFileSync(path.join(dataDir, "tinystories_plain.json"), JSON.stringify(out, null, 1) + "\n");
}
console.log("done");
