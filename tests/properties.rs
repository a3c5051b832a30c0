//! Properties of the two parsers every client can reach: cursors and client messages.

use proptest::prelude::*;
use pushgate::cursor::Cursor;
use pushgate::protocol::{ClientMessage, ErrorCode};
use serde_json::json;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn cursors_round_trip(epoch in any::<u64>(), offsets in prop::collection::vec(any::<u64>(), 0..64)) {
        let cursor = Cursor::new(epoch, offsets);
        let text = cursor.encode();
        prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        prop_assert_eq!(Cursor::decode(&text).unwrap(), cursor);
    }

    #[test]
    fn cursor_decoder_never_panics(text in ".{0,200}") {
        let _ = Cursor::decode(&text);
    }

    #[test]
    fn cursor_decoder_survives_corrupted_cursors(epoch in any::<u64>(), offsets in prop::collection::vec(any::<u64>(), 1..16), cut in 0usize..100, flip in any::<u8>()) {
        let mut text = Cursor::new(epoch, offsets).encode().into_bytes();
        let at = cut % text.len();
        text[at] = b"ABCxyz019-_"[flip as usize % 11];
        text.truncate(text.len() - cut % 3);
        let _ = Cursor::decode(std::str::from_utf8(&text).unwrap());
    }

    #[test]
    fn message_parser_never_panics(text in ".{0,300}") {
        let _ = ClientMessage::parse(&text);
    }

    #[test]
    fn message_parser_on_json_shaped_input(kind in "(subscribe|unsubscribe|ping|refresh|[a-z]{0,8})", topic in proptest::option::of(".{0,20}"), keys in proptest::option::of(prop::collection::vec(".{0,8}", 0..5)), id in proptest::option::of(any::<i64>())) {
        let mut msg = json!({"type": kind});
        if let Some(t) = &topic { msg["topic"] = json!(t); }
        if let Some(k) = &keys { msg["keys"] = json!(k); }
        if let Some(i) = id { msg["id"] = json!(i); }
        match ClientMessage::parse(&msg.to_string()) {
            Ok(ClientMessage::Subscribe(req)) => {
                prop_assert_eq!(kind.as_str(), "subscribe");
                prop_assert_eq!(Some(req.topic), topic);
            }
            Ok(_) => prop_assert!(["unsubscribe", "ping"].contains(&kind.as_str())),
            Err(e) => {
                let known = ["subscribe", "unsubscribe", "ping", "refresh"].contains(&kind.as_str());
                prop_assert_eq!(e.code == ErrorCode::UnknownType, !known);
            }
        }
    }
}
