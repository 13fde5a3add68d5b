//! Webhook signatures: each scheme's documented vectors, rotation, tolerance, replay, and errors that never quote a secret.

use super::*;
use crate::body::replay::MemoryReplayStore;

// Vectors produced independently of this code (one copy, shared with the Envoy tests).
include!("../../../../tests/data/webhook_vectors.rs");

// --- helpers -----------------------------------------------------------------------------

fn webhook(scheme: &str, secrets: &[&str]) -> Webhook {
    webhook_with(scheme, secrets, None, false)
}

fn webhook_with(
    scheme: &str,
    secrets: &[&str],
    tolerance_seconds: Option<u64>,
    replay_protection: bool,
) -> Webhook {
    let cfg = WebhookConfig {
        scheme: scheme.into(),
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        tolerance_seconds,
        replay_protection,
    };
    Webhook::compile(scheme, &cfg, &format!("webhooks.{scheme}")).unwrap()
}

fn head(headers: &[(&str, &str)]) -> RequestHead {
    let mut all = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), "/webhooks".to_string()),
    ];
    all.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    RequestHead::from_host(all, Some("10.0.0.1:1234"))
}

fn stripe(header: &str) -> RequestHead {
    head(&[(STRIPE_SIGNATURE_HEADER, header)])
}

fn standard(id: &str, timestamp: &str, signature: &str) -> RequestHead {
    head(&[
        (STANDARD_ID_HEADER, id),
        (STANDARD_TIMESTAMP_HEADER, timestamp),
        (STANDARD_SIGNATURE_HEADER, signature),
    ])
}

fn standard_vector() -> RequestHead {
    standard(
        STANDARD_ID,
        &STANDARD_TIMESTAMP.to_string(),
        STANDARD_SIGNATURE,
    )
}

fn compile_errors(scheme: &str, secrets: &[&str], tolerance: Option<u64>) -> Vec<ConfigError> {
    let cfg = WebhookConfig {
        scheme: scheme.into(),
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
        tolerance_seconds: tolerance,
        replay_protection: false,
    };
    Webhook::compile("hook", &cfg, "webhooks.hook").unwrap_err()
}

// --- github --------------------------------------------------------------------------------

#[test]
fn github_documented_example_verifies() {
    let hook = webhook("github", &[GITHUB_SECRET]);
    let verified = hook
        .verify(
            &head(&[(GITHUB_SIGNATURE_HEADER, GITHUB_SIGNATURE)]),
            GITHUB_BODY.as_bytes(),
            0,
        )
        .unwrap();
    assert_eq!(verified.timestamp, None);
    assert_eq!(verified.replay_key.len(), 64);
}

#[test]
fn github_uppercase_hex_is_the_same_signature() {
    let hook = webhook("github", &[GITHUB_SECRET]);
    let upper = format!("sha256={}", GITHUB_SIGNATURE[7..].to_uppercase());
    assert!(hook
        .verify(
            &head(&[(GITHUB_SIGNATURE_HEADER, &upper)]),
            b"Hello, World!",
            0
        )
        .is_ok());
}

#[test]
fn github_refuses_tampered_body_and_wrong_secret() {
    let hook = webhook("github", &[GITHUB_SECRET]);
    let h = head(&[(GITHUB_SIGNATURE_HEADER, GITHUB_SIGNATURE)]);
    assert_eq!(
        hook.verify(&h, b"Hello, World?", 0),
        Err(WebhookRefusal::NoMatchingSignature)
    );
    let other = webhook("github", &["It's a Secret to Somebody"]);
    assert_eq!(
        other.verify(&h, GITHUB_BODY.as_bytes(), 0),
        Err(WebhookRefusal::NoMatchingSignature)
    );
}

#[test]
fn github_rotated_secret_matches_second() {
    let hook = webhook("github", &["a-newer-secret-not-yet-used", GITHUB_SECRET]);
    let h = head(&[(GITHUB_SIGNATURE_HEADER, GITHUB_SIGNATURE)]);
    assert!(hook.verify(&h, GITHUB_BODY.as_bytes(), 0).is_ok());
}

#[test]
fn github_malformed_headers() {
    let hook = webhook("github", &[GITHUB_SECRET]);
    let body = GITHUB_BODY.as_bytes();
    let sig_hex = &GITHUB_SIGNATURE[7..];
    for bad in [
        sig_hex.to_string(),                    // no prefix
        format!("sha1={sig_hex}"),              // wrong algorithm
        format!("sha256={}", &sig_hex[..62]),   // too short
        format!("sha256={sig_hex}00"),          // too long
        format!("sha256={}zz", &sig_hex[..62]), // not hex
        "sha256=".to_string(),                  // empty
    ] {
        assert_eq!(
            hook.verify(&head(&[(GITHUB_SIGNATURE_HEADER, &bad)]), body, 0),
            Err(WebhookRefusal::BadFormat),
            "{bad}"
        );
    }
    assert_eq!(
        hook.verify(&head(&[]), body, 0),
        Err(WebhookRefusal::MissingHeader)
    );
    assert_eq!(
        hook.verify(&head(&[(GITHUB_SIGNATURE_HEADER, "  ")]), body, 0),
        Err(WebhookRefusal::MissingHeader)
    );
    // Two signature headers: a front proxy and the app might each read a different one.
    assert_eq!(
        hook.verify(
            &head(&[
                (GITHUB_SIGNATURE_HEADER, GITHUB_SIGNATURE),
                (GITHUB_SIGNATURE_HEADER, GITHUB_SIGNATURE)
            ]),
            body,
            0
        ),
        Err(WebhookRefusal::BadFormat)
    );
}

// --- stripe --------------------------------------------------------------------------------

#[test]
fn stripe_package_vector_verifies() {
    let hook = webhook("stripe", &[STRIPE_SECRET]);
    let verified = hook
        .verify(
            &stripe(STRIPE_HEADER),
            STRIPE_BODY.as_bytes(),
            STRIPE_TIMESTAMP + 10,
        )
        .unwrap();
    assert_eq!(verified.timestamp, Some(STRIPE_TIMESTAMP));
}

#[test]
fn stripe_tampered_body_and_wrong_secret_are_refused() {
    let hook = webhook("stripe", &[STRIPE_SECRET]);
    let tampered = STRIPE_BODY.replace("2000", "20000");
    assert_eq!(
        hook.verify(
            &stripe(STRIPE_HEADER),
            tampered.as_bytes(),
            STRIPE_TIMESTAMP
        ),
        Err(WebhookRefusal::NoMatchingSignature)
    );
    let wrong = webhook("stripe", &["whsec_0000000000000000000000000000000"]);
    assert_eq!(
        wrong.verify(
            &stripe(STRIPE_HEADER),
            STRIPE_BODY.as_bytes(),
            STRIPE_TIMESTAMP
        ),
        Err(WebhookRefusal::NoMatchingSignature)
    );
    // A signature for another timestamp does not verify this one.
    let moved = STRIPE_HEADER.replace("t=1700000000", "t=1700000001");
    assert_eq!(
        hook.verify(&stripe(&moved), STRIPE_BODY.as_bytes(), STRIPE_TIMESTAMP),
        Err(WebhookRefusal::NoMatchingSignature)
    );
}

#[test]
fn stripe_rotation_either_secret_and_either_signature() {
    // The second configured secret matches.
    let hook = webhook("stripe", &[STRIPE_SECRET, STRIPE_ROTATED_SECRET]);
    let body = STRIPE_BODY.as_bytes();
    assert!(hook
        .verify(&stripe(STRIPE_ROTATED_HEADER), body, STRIPE_TIMESTAMP)
        .is_ok());
    // Several v1 signatures, the second one matches the only configured secret.
    let rotated_only = webhook("stripe", &[STRIPE_ROTATED_SECRET]);
    let both = rotated_only
        .verify(&stripe(STRIPE_BOTH_HEADER), body, STRIPE_TIMESTAMP)
        .unwrap();
    // The replay key does not depend on which signature matched: stripping one of the two
    // signatures gives the same key, so it cannot be used to dodge replay protection.
    let single = rotated_only
        .verify(&stripe(STRIPE_ROTATED_HEADER), body, STRIPE_TIMESTAMP)
        .unwrap();
    assert_eq!(both.replay_key, single.replay_key);
    // A bogus first v1 does not hide a good second one.
    let bogus_first = format!(
        "t=1700000000,v1={},{}",
        "ab".repeat(32),
        &STRIPE_HEADER[13..]
    );
    assert!(hook
        .verify(&stripe(&bogus_first), body, STRIPE_TIMESTAMP)
        .is_ok());
    // Unknown schemes such as v0 are ignored.
    let with_v0 = format!("{STRIPE_HEADER},v0={}", "cd".repeat(32));
    assert!(hook
        .verify(&stripe(&with_v0), body, STRIPE_TIMESTAMP)
        .is_ok());
}

#[test]
fn stripe_timestamps_are_bounded_in_both_directions() {
    let hook = webhook_with("stripe", &[STRIPE_SECRET], Some(300), false);
    let body = STRIPE_BODY.as_bytes();
    let h = stripe(STRIPE_HEADER);
    assert!(hook.verify(&h, body, STRIPE_TIMESTAMP + 300).is_ok());
    assert_eq!(
        hook.verify(&h, body, STRIPE_TIMESTAMP + 301),
        Err(WebhookRefusal::StaleTimestamp)
    );
    assert!(hook.verify(&h, body, STRIPE_TIMESTAMP - 300).is_ok());
    assert_eq!(
        hook.verify(&h, body, STRIPE_TIMESTAMP - 301),
        Err(WebhookRefusal::FutureTimestamp)
    );
    // A forged delivery is reported as a forgery, whatever its timestamp.
    assert_eq!(
        hook.verify(&h, b"{}", STRIPE_TIMESTAMP + 10_000),
        Err(WebhookRefusal::NoMatchingSignature)
    );
}

#[test]
fn stripe_malformed_headers() {
    let hook = webhook("stripe", &[STRIPE_SECRET]);
    let body = STRIPE_BODY.as_bytes();
    let sig = &STRIPE_HEADER[16..];
    for bad in [
        format!("t=abc,v1={sig}"),
        format!("t=,v1={sig}"),
        format!("t=-1700000000,v1={sig}"),
        format!("t=1700000000.5,v1={sig}"),
        format!("t=01700000000,v1={sig}"),
        format!("t=99999999999999999999999,v1={sig}"),
        "t=1700000000".to_string(),
        format!("t=1700000000,v0={sig}"),
        format!("v1={sig}"),
        format!("t=1700000000,t=1700000000,v1={sig}"),
        format!("t=1700000000,v1={}", &sig[..62]),
        format!("t=1700000000,v1={sig}ab"),
        format!("t=1700000000,v1={}xy", &sig[..62]),
        format!("t=1700000000,v1={sig},"),
        format!("t=1700000000,garbage,v1={sig}"),
        format!("t=1700000000{}", format!(",v1={sig}").repeat(17)),
    ] {
        assert_eq!(
            hook.verify(&stripe(&bad), body, STRIPE_TIMESTAMP),
            Err(WebhookRefusal::BadFormat),
            "{bad}"
        );
    }
    assert_eq!(
        hook.verify(&head(&[]), body, STRIPE_TIMESTAMP),
        Err(WebhookRefusal::MissingHeader)
    );
    // Spaces after commas are tolerated.
    let spaced = STRIPE_HEADER.replace(',', ", ");
    assert!(hook
        .verify(&stripe(&spaced), body, STRIPE_TIMESTAMP)
        .is_ok());
}

// --- standard webhooks ---------------------------------------------------------------------

#[test]
fn standard_package_vector_verifies() {
    let hook = webhook("standard", &[STANDARD_SECRET]);
    let verified = hook
        .verify(
            &standard_vector(),
            STANDARD_BODY.as_bytes(),
            STANDARD_TIMESTAMP,
        )
        .unwrap();
    assert_eq!(verified.timestamp, Some(STANDARD_TIMESTAMP));
}

#[test]
fn standard_refuses_tampering_of_body_id_and_timestamp() {
    let hook = webhook("standard", &[STANDARD_SECRET]);
    let now = STANDARD_TIMESTAMP;
    assert_eq!(
        hook.verify(&standard_vector(), b"{}", now),
        Err(WebhookRefusal::NoMatchingSignature)
    );
    let other_id = standard("msg_other", "1700000000", STANDARD_SIGNATURE);
    assert_eq!(
        hook.verify(&other_id, STANDARD_BODY.as_bytes(), now),
        Err(WebhookRefusal::NoMatchingSignature)
    );
    let other_ts = standard(STANDARD_ID, "1700000001", STANDARD_SIGNATURE);
    assert_eq!(
        hook.verify(&other_ts, STANDARD_BODY.as_bytes(), now),
        Err(WebhookRefusal::NoMatchingSignature)
    );
    let wrong_secret = webhook("standard", &[STANDARD_ROTATED_SECRET]);
    assert_eq!(
        wrong_secret.verify(&standard_vector(), STANDARD_BODY.as_bytes(), now),
        Err(WebhookRefusal::NoMatchingSignature)
    );
}

#[test]
fn standard_rotation_and_several_signatures() {
    let body = STANDARD_BODY.as_bytes();
    let now = STANDARD_TIMESTAMP;
    let hook = webhook("standard", &[STANDARD_ROTATED_SECRET, STANDARD_SECRET]);
    assert!(hook.verify(&standard_vector(), body, now).is_ok());

    let rotated_only = webhook("standard", &[STANDARD_ROTATED_SECRET]);
    let both = format!("{STANDARD_SIGNATURE} {STANDARD_ROTATED_SIGNATURE}");
    let h = standard(STANDARD_ID, "1700000000", &both);
    assert!(rotated_only.verify(&h, body, now).is_ok());
    // Asymmetric `v1a` entries are skipped, not refused.
    let with_v1a = format!("v1a,AAAA {STANDARD_SIGNATURE}");
    let h = standard(STANDARD_ID, "1700000000", &with_v1a);
    assert!(hook.verify(&h, body, now).is_ok());
}

#[test]
fn standard_timestamps_are_bounded_in_both_directions() {
    let hook = webhook_with("standard", &[STANDARD_SECRET], Some(60), false);
    let body = STANDARD_BODY.as_bytes();
    let h = standard_vector();
    assert!(hook.verify(&h, body, STANDARD_TIMESTAMP + 60).is_ok());
    assert_eq!(
        hook.verify(&h, body, STANDARD_TIMESTAMP + 61),
        Err(WebhookRefusal::StaleTimestamp)
    );
    assert!(hook.verify(&h, body, STANDARD_TIMESTAMP - 60).is_ok());
    assert_eq!(
        hook.verify(&h, body, STANDARD_TIMESTAMP - 61),
        Err(WebhookRefusal::FutureTimestamp)
    );
}

#[test]
fn standard_missing_and_malformed_headers() {
    let hook = webhook("standard", &[STANDARD_SECRET]);
    let body = STANDARD_BODY.as_bytes();
    let now = STANDARD_TIMESTAMP;
    let ts = "1700000000";
    for (id, timestamp, signature) in [
        ("", ts, STANDARD_SIGNATURE),
        (STANDARD_ID, "", STANDARD_SIGNATURE),
        (STANDARD_ID, ts, ""),
    ] {
        assert_eq!(
            hook.verify(&standard(id, timestamp, signature), body, now),
            Err(WebhookRefusal::MissingHeader)
        );
    }
    assert_eq!(
        hook.verify(
            &head(&[
                (STANDARD_ID_HEADER, STANDARD_ID),
                (STANDARD_TIMESTAMP_HEADER, ts)
            ]),
            body,
            now
        ),
        Err(WebhookRefusal::MissingHeader)
    );
    let long_id = "m".repeat(MAX_WEBHOOK_ID_BYTES + 1);
    for (id, timestamp, signature) in [
        (STANDARD_ID, "abc", STANDARD_SIGNATURE),
        (STANDARD_ID, "1700000000.0", STANDARD_SIGNATURE),
        (STANDARD_ID, ts, "v1"),
        (STANDARD_ID, ts, "v1,not base64!"),
        (STANDARD_ID, ts, "v1,AAAA"),
        (
            STANDARD_ID,
            ts,
            "v2,PlAd/tQx8zYcVJw7C4hNxE40G6MM8RiGAbALZElY990=",
        ),
        (
            STANDARD_ID,
            ts,
            "PlAd/tQx8zYcVJw7C4hNxE40G6MM8RiGAbALZElY990=",
        ),
        (long_id.as_str(), ts, STANDARD_SIGNATURE),
    ] {
        assert_eq!(
            hook.verify(&standard(id, timestamp, signature), body, now),
            Err(WebhookRefusal::BadFormat),
            "{id} {timestamp} {signature}"
        );
    }
}

#[test]
fn required_headers_per_scheme() {
    assert_eq!(
        webhook("stripe", &[STRIPE_SECRET]).required_headers(),
        &["stripe-signature"]
    );
    assert_eq!(
        webhook("github", &[GITHUB_SECRET]).required_headers(),
        &["x-hub-signature-256"]
    );
    assert_eq!(
        webhook("standard", &[STANDARD_SECRET]).required_headers(),
        &["webhook-id", "webhook-timestamp", "webhook-signature"]
    );
}

// --- replay protection -------------------------------------------------------------------

#[test]
fn replay_is_refused_within_the_window_and_forgotten_after() {
    let hook = webhook_with("stripe", &[STRIPE_SECRET], Some(300), true);
    let store = MemoryReplayStore::default();
    let body = STRIPE_BODY.as_bytes();
    let now = STRIPE_TIMESTAMP + 5;
    let verified = hook.verify(&stripe(STRIPE_HEADER), body, now).unwrap();
    assert_eq!(hook.check_replay(&verified, &store, now), Ok(()));
    assert_eq!(
        hook.check_replay(&verified, &store, now + 100),
        Err(WebhookRefusal::Replayed)
    );
    // Another delivery at the same second is not a replay.
    let other = Verified {
        replay_key: replay_key("stripe", &[b"1700000000", b".", b"{}"]),
        timestamp: Some(STRIPE_TIMESTAMP),
    };
    assert_eq!(hook.check_replay(&other, &store, now), Ok(()));
    // Once the timestamp is out of tolerance the signature check refuses it anyway, so the
    // key no longer needs to be remembered.
    assert_eq!(
        hook.verify(&stripe(STRIPE_HEADER), body, STRIPE_TIMESTAMP + 301),
        Err(WebhookRefusal::StaleTimestamp)
    );
    assert_eq!(
        hook.check_replay(&verified, &store, STRIPE_TIMESTAMP + 301),
        Ok(())
    );
}

#[test]
fn standard_replay_key_is_the_signed_id_and_timestamp() {
    let hook = webhook_with("standard", &[STANDARD_SECRET], None, true);
    let store = MemoryReplayStore::default();
    let now = STANDARD_TIMESTAMP;
    let verified = hook
        .verify(&standard_vector(), STANDARD_BODY.as_bytes(), now)
        .unwrap();
    assert_eq!(hook.check_replay(&verified, &store, now), Ok(()));
    let again = hook
        .verify(&standard_vector(), STANDARD_BODY.as_bytes(), now + 1)
        .unwrap();
    assert_eq!(
        hook.check_replay(&again, &store, now + 1),
        Err(WebhookRefusal::Replayed)
    );
}

#[test]
fn github_replay_key_ignores_the_unsigned_delivery_id() {
    let hook = webhook_with("github", &[GITHUB_SECRET], Some(300), true);
    let store = MemoryReplayStore::default();
    let first = head(&[
        (GITHUB_SIGNATURE_HEADER, GITHUB_SIGNATURE),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    ]);
    let replayed = head(&[
        (GITHUB_SIGNATURE_HEADER, GITHUB_SIGNATURE),
        ("x-github-delivery", "00000000-0000-0000-0000-000000000000"),
    ]);
    let body = GITHUB_BODY.as_bytes();
    let v1 = hook.verify(&first, body, 1000).unwrap();
    let v2 = hook.verify(&replayed, body, 1001).unwrap();
    assert_eq!(hook.check_replay(&v1, &store, 1000), Ok(()));
    assert_eq!(
        hook.check_replay(&v2, &store, 1001),
        Err(WebhookRefusal::Replayed)
    );
    // Without a signed timestamp the key is kept for `tolerance_seconds`.
    assert_eq!(hook.check_replay(&v2, &store, 1301), Ok(()));
}

#[test]
fn replay_protection_off_never_asks_the_store() {
    struct FailingStore;
    impl ReplayStore for FailingStore {
        fn seen_or_insert(
            &self,
            _: &str,
            _: u64,
            _: u64,
        ) -> Result<bool, crate::body::replay::ReplayStoreUnavailable> {
            Err(crate::body::replay::ReplayStoreUnavailable)
        }
    }
    let verified = Verified {
        replay_key: "k".into(),
        timestamp: None,
    };
    let off = webhook("github", &[GITHUB_SECRET]);
    assert_eq!(off.check_replay(&verified, &FailingStore, 0), Ok(()));
    let on = webhook_with("github", &[GITHUB_SECRET], None, true);
    let refusal = on.check_replay(&verified, &FailingStore, 0).unwrap_err();
    assert_eq!(refusal, WebhookRefusal::ReplayCheckUnavailable);
    assert_eq!(refusal.error_code(), ErrorCode::ServiceUnavailable);
    assert_eq!(
        WebhookRefusal::Replayed.error_code(),
        ErrorCode::InvalidSignature
    );
}

// --- config --------------------------------------------------------------------------------

#[test]
fn config_errors_name_the_path_and_never_the_secret() {
    let errors = compile_errors(
        "stripe",
        &["sk_live_notawebhooksecret", "whsec_short"],
        Some(0),
    );
    let rendered: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(rendered.len(), 3, "{rendered:?}");
    assert!(rendered[0].starts_with("webhooks.hook.secrets[0]: "));
    assert!(rendered[1].starts_with("webhooks.hook.secrets[1]: "));
    assert!(rendered[2].starts_with("webhooks.hook.tolerance_seconds: "));
    for line in &rendered {
        assert!(
            !line.contains("sk_live_notawebhooksecret") && !line.contains("whsec_short"),
            "{line}"
        );
    }

    let errors = compile_errors("svix", &[STANDARD_SECRET], None);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "webhooks.hook.scheme");

    let errors = compile_errors("github", &[], None);
    assert_eq!(errors[0].path, "webhooks.hook.secrets");

    let errors = compile_errors("standard", &["whsec_!!!not-base64!!!"], None);
    assert_eq!(errors[0].path, "webhooks.hook.secrets[0]");
    assert!(!errors[0].message.contains("not-base64"));

    let errors = compile_errors("standard", &["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], None);
    assert_eq!(errors[0].path, "webhooks.hook.secrets[0]");

    let errors = compile_errors("github", &["short"], Some(MAX_TOLERANCE_SECONDS + 1));
    assert_eq!(errors.len(), 2);

    let errors = compile_errors("github", &[" It's a Secret to Everybody"], None);
    assert_eq!(errors[0].path, "webhooks.hook.secrets[0]");

    let many: Vec<&str> = std::iter::repeat_n(GITHUB_SECRET, MAX_SECRETS + 1).collect();
    let errors = compile_errors("github", &many, None);
    assert_eq!(errors[0].path, "webhooks.hook.secrets");
}

#[test]
fn config_rejects_unknown_fields_and_defaults_tolerance() {
    let parsed: Result<WebhookConfig, _> =
        serde_json::from_str(r#"{"scheme":"github","secrets":["x"],"tolerence_seconds":5}"#);
    assert!(parsed.is_err());
    let cfg: WebhookConfig =
        serde_json::from_str(r#"{"scheme":"github","secrets":["It's a Secret to Everybody"]}"#)
            .unwrap();
    let hook = Webhook::compile("gh", &cfg, "webhooks.gh").unwrap();
    assert_eq!(hook.tolerance_seconds(), DEFAULT_TOLERANCE_SECONDS);
    assert!(!hook.replay_protection());
    assert_eq!(hook.scheme(), WebhookScheme::Github);
}

#[test]
fn unpadded_standard_secret_is_accepted() {
    let unpadded = STANDARD_ROTATED_SECRET.trim_end_matches('=');
    let hook = webhook("standard", &[unpadded]);
    let h = standard(STANDARD_ID, "1700000000", STANDARD_ROTATED_SIGNATURE);
    assert!(hook
        .verify(&h, STANDARD_BODY.as_bytes(), STANDARD_TIMESTAMP)
        .is_ok());
}

#[test]
fn debug_output_never_shows_secrets() {
    let cfg = WebhookConfig {
        scheme: "stripe".into(),
        secrets: vec![STRIPE_SECRET.into()],
        tolerance_seconds: None,
        replay_protection: true,
    };
    let cfg_debug = format!("{cfg:?}");
    let hook_debug = format!("{:?}", Webhook::compile("s", &cfg, "webhooks.s").unwrap());
    for text in [cfg_debug, hook_debug] {
        assert!(!text.contains("5a1d0c9e"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }
}
