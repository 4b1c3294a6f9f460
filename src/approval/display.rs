//! Showing agent-supplied text to people.
//!
//! Everything an approver reads about a held call (path, query, headers, body) comes from the
//! agent, which may be prompt-injected. Control characters can rewrite a terminal line, and
//! bidirectional overrides (U+202E and friends) or invisible format characters make text read
//! differently from what it is: `/api/users/\u{202e}nimda` shows as `/api/users/admin`. So
//! every such character is shown as a visible escape, `\u{202e}`, in the CLI and in webhook
//! text, and the console does the same in JavaScript with the same character classes.
//!
//! The classes are Unicode general categories: `Cc` (C0 and C1 controls, DEL), `Cf` (format
//! characters: bidi marks, embeddings, overrides and isolates, zero-width characters, the BOM,
//! tag characters), `Zl` and `Zp` (line and paragraph separators). Bodies keep `\n` and `\t`
//! so that JSON and text stay readable; single-line fields escape them too.
//!
//! A backslash is shown as itself: an agent writing the six characters `\u{41}` only makes
//! visible text, never an invisible or reordering character.

use regex::Regex;
use std::borrow::Cow;
use std::sync::LazyLock;

/// Characters shown escaped in single-line fields.
static LINE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]").expect("static regex"));

/// Characters shown escaped in multi-line text: the same, except `\n` and `\t`.
static TEXT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]--[\n\t]]").expect("static regex"));

/// Whether `c` is shown escaped in a single-line field.
pub fn needs_escape(c: char) -> bool {
    let mut buf = [0u8; 4];
    LINE.is_match(c.encode_utf8(&mut buf))
}

fn escaped(c: char) -> String {
    match c {
        '\n' => "\\n".into(),
        '\t' => "\\t".into(),
        '\r' => "\\r".into(),
        c => format!("\\u{{{:x}}}", c as u32),
    }
}

/// Agent-supplied text as people may safely read it: control, bidi and invisible format
/// characters become visible escapes (`\u{202e}`, `\n`). With `multiline`, `\n` and `\t` are
/// kept (bodies); without, they are escaped too (paths, queries, header values, names).
///
/// The one escaping function of the CLI and of webhook text.
pub fn escape(s: &str, multiline: bool) -> Cow<'_, str> {
    let re = if multiline { &*TEXT } else { &*LINE };
    re.replace_all(s, |c: &regex::Captures<'_>| {
        c[0].chars().map(escaped).collect::<String>()
    })
}

/// [`escape`] for a single-line field.
pub fn escape_line(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// [`escape`] for a body: newlines and tabs kept.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// JSON text (as serde_json writes it, compact or pretty) with every character
/// [`needs_escape`] written as a JSON `\uXXXX` escape: the same JSON value, but safe to print on
/// a terminal. serde_json writes raw newlines only between tokens (pretty form, kept as they
/// are) and never inside strings, and the other characters can only occur inside strings, where
/// the escape means the same character.
pub fn json_ascii_safe(json: &str) -> Cow<'_, str> {
    TEXT.replace_all(json, |c: &regex::Captures<'_>| {
        let mut out = String::new();
        for ch in c[0].chars() {
            let mut units = [0u16; 2];
            for u in ch.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_controls_and_invisibles_are_shown_escaped() {
        let cases = [
            ("/api/users/\u{202e}nimda", "/api/users/\\u{202e}nimda"),
            ("a\u{200e}b\u{200f}c", "a\\u{200e}b\\u{200f}c"),
            (
                "\u{202a}\u{202b}\u{202c}\u{202d}",
                "\\u{202a}\\u{202b}\\u{202c}\\u{202d}",
            ),
            (
                "\u{2066}x\u{2067}\u{2068}\u{2069}",
                "\\u{2066}x\\u{2067}\\u{2068}\\u{2069}",
            ),
            ("zero\u{200b}width\u{feff}", "zero\\u{200b}width\\u{feff}"),
            ("tag\u{e0041}", "tag\\u{e0041}"),
            ("esc\u{1b}[2Kline", "esc\\u{1b}[2Kline"),
            ("c1\u{85}\u{9b}", "c1\\u{85}\\u{9b}"),
            ("nul\0del\u{7f}", "nul\\u{0}del\\u{7f}"),
            ("ls\u{2028}ps\u{2029}", "ls\\u{2028}ps\\u{2029}"),
            ("a\nb\tc\rd", "a\\nb\\tc\\rd"),
            ("plain ascii & Zoë ✓ 中文", "plain ascii & Zoë ✓ 中文"),
        ];
        for (input, want) in cases {
            assert_eq!(escape_line(input), want, "{input:?}");
        }
    }

    #[test]
    fn bodies_keep_newlines_and_tabs_only() {
        assert_eq!(
            escape_text("{\n\t\"a\": \"\u{202e}x\r\"\n}"),
            "{\n\t\"a\": \"\\u{202e}x\\r\"\n}"
        );
    }

    #[test]
    fn untouched_text_is_not_copied() {
        assert!(matches!(escape_line("/api/tickets/1"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_stays_the_same_value_and_prints_safely() {
        let v = serde_json::json!({"path": "/a\u{202e}b", "tag": "x\u{e0041}", "n": "l\u{85}"});
        let text = serde_json::to_string_pretty(&v).unwrap();
        let safe = json_ascii_safe(&text);
        assert!(
            !safe.chars().any(|c| c != '\n' && needs_escape(c)),
            "{safe}"
        );
        assert!(
            safe.contains("\\u202e") && safe.contains("\\udb40\\udc41"),
            "{safe}"
        );
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, v);
    }
}
