//! Property tests of the request decoder: it never panics, whatever the text; an error names the
//! request's `id` whenever the frame carries a valid one; and every valid request survives a
//! round trip through its JSON text.

use proptest::prelude::*;
use redistribute_protocol::request::{MAX_ID, MAX_MAXLEN};
use redistribute_protocol::{Limits, Op, Request, Start, StreamId};

fn text(chars: impl Strategy<Value = char>, len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    proptest::collection::vec(chars, len).prop_map(String::from_iter)
}

fn name() -> impl Strategy<Value = String> {
    text(prop_oneof![proptest::char::range('a', 'z'), proptest::char::range('0', '9'), Just(':'), Just('-')], 1..40)
}

fn stream_id() -> impl Strategy<Value = StreamId> {
    (any::<u64>(), any::<u64>()).prop_map(|(ms, seq)| StreamId::new(ms, seq))
}

fn start() -> impl Strategy<Value = Start> {
    prop_oneof![Just(Start::Latest), stream_id().prop_map(Start::After)]
}

fn op() -> impl Strategy<Value = Op> {
    let fields = proptest::collection::vec(text(any::<char>(), 0..20), 1..6)
        .prop_map(|pairs| pairs.into_iter().flat_map(|v| ["k".to_owned(), v]).collect::<Vec<_>>());
    prop_oneof![
        (name(), start()).prop_map(|(channel, start)| Op::Subscribe { channel, start }),
        (name(), name(), name(), start()).prop_map(|(channel, group, consumer, start)| Op::GroupSubscribe {
            channel,
            group,
            consumer,
            start
        }),
        name().prop_map(|channel| Op::Unsubscribe { channel }),
        (name(), name()).prop_map(|(channel, group)| Op::GroupUnsubscribe { channel, group }),
        (name(), name(), proptest::collection::vec(stream_id(), 1..20)).prop_map(|(channel, group, offsets)| Op::Ack {
            channel,
            group,
            offsets
        }),
        (
            name(),
            fields,
            proptest::option::of(1..=MAX_MAXLEN),
            proptest::option::of(text(proptest::char::range('!', '~'), 1..65))
        )
            .prop_map(|(channel, fields, maxlen, idempotency_key)| Op::Publish {
                channel,
                fields,
                maxlen,
                idempotency_key
            }),
        Just(Op::Ping),
        text(proptest::char::range('!', '~'), 1..200).prop_map(|token| Op::Auth { token }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_text_gets_an_answer_never_a_panic(frame in text(any::<char>(), 0..300)) {
        let _ = Request::parse(&frame, &Limits::default());
    }

    #[test]
    fn valid_requests_round_trip(id in 0..=MAX_ID, op in op()) {
        let request = Request { id, op };
        prop_assert_eq!(Request::parse(&request.to_json(), &Limits::default()), Ok(request));
    }

    #[test]
    fn a_valid_id_is_kept_in_errors(id in 0..=MAX_ID, junk in text(any::<char>(), 0..40), key in text(any::<char>(), 0..10)) {
        let frame = serde_json::json!({"id": id, "op": junk, key: junk}).to_string();
        if let Err(error) = Request::parse(&frame, &Limits::default()) {
            prop_assert_eq!(error.id, Some(id));
        }
    }

    #[test]
    fn mutated_requests_never_panic(id in 0..=MAX_ID, op in op(), cut in any::<prop::sample::Index>(), byte in any::<char>()) {
        let text = Request { id, op }.to_json();
        let mut chars: Vec<char> = text.chars().collect();
        let at = cut.index(chars.len() + 1);
        chars.insert(at, byte);
        let mutated: String = chars.iter().collect();
        let _ = Request::parse(&mutated, &Limits::default());
        let _ = Request::parse(&text.chars().take(at).collect::<String>(), &Limits::default());
    }

    #[test]
    fn offsets_print_and_parse_back(id in stream_id()) {
        prop_assert_eq!(id.to_string().parse::<StreamId>(), Ok(id));
    }
}
