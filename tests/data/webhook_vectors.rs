// Webhook signature vectors produced independently of api-guard: GitHub's documented example,
// and signatures made by the schemes' own libraries. One copy, included by the core's unit tests
// (core/src/body/webhook/tests.rs) and by the Envoy tests (tests/envoy_webhooks.rs).

// GitHub's documented example ("Validating webhook deliveries").
#[allow(dead_code)]
const GITHUB_SECRET: &str = "It's a Secret to Everybody";
#[allow(dead_code)]
const GITHUB_BODY: &str = "Hello, World!";
#[allow(dead_code)]
const GITHUB_SIGNATURE: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

// Produced by PyPI `stripe` 16.1.0:
// `stripe.WebhookSignature.generate_signature_header(STRIPE_BODY, secret, 1700000000)`,
// and checked with its `WebhookSignature.verify_header`.
#[allow(dead_code)]
const STRIPE_SECRET: &str = "whsec_5a1d0c9e6b3f4e2a8c7d9b0e1f2a3c4d";
#[allow(dead_code)]
const STRIPE_ROTATED_SECRET: &str = "whsec_rotated7c2e9f4b1a6d3e8c5b2a9f6e";
#[allow(dead_code)]
const STRIPE_TIMESTAMP: u64 = 1700000000;
#[allow(dead_code)]
const STRIPE_BODY: &str = r#"{"id":"evt_1NqGJ2LkdIwHu7ix","object":"event","type":"payment_intent.succeeded","data":{"object":{"id":"pi_3Nq","amount":2000,"currency":"usd"}}}"#;
#[allow(dead_code)]
const STRIPE_HEADER: &str =
    "t=1700000000,v1=1235bf4214e08326cae0515f7dc81583c2511ffbe5ba26e9ae325b021ae616e9";
#[allow(dead_code)]
const STRIPE_ROTATED_HEADER: &str =
    "t=1700000000,v1=6dbaa9e9e523683ccf5d9e8137307b3aa6ebc81f8a06daa8bbf4c980dfd4e8fa";
// Both signatures in one header, as Stripe sends during a rotation (accepted by
// `verify_header` with the rotated secret).
#[allow(dead_code)]
const STRIPE_BOTH_HEADER: &str = "t=1700000000,v1=1235bf4214e08326cae0515f7dc81583c2511ffbe5ba26e9ae325b021ae616e9,v1=6dbaa9e9e523683ccf5d9e8137307b3aa6ebc81f8a06daa8bbf4c980dfd4e8fa";

// Produced by PyPI `standardwebhooks` 1.1.0:
// `Webhook(secret).sign(STANDARD_ID, datetime.fromtimestamp(1700000000, utc), STANDARD_BODY)`.
// The first secret is the example secret of the Standard Webhooks README.
#[allow(dead_code)]
const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
#[allow(dead_code)]
const STANDARD_ROTATED_SECRET: &str = "whsec_c2Vjb25kLXN0YW5kYXJkLXdlYmhvb2tzLXNlY3JldCE=";
#[allow(dead_code)]
const STANDARD_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
#[allow(dead_code)]
const STANDARD_TIMESTAMP: u64 = 1700000000;
#[allow(dead_code)]
const STANDARD_BODY: &str = r#"{"type":"contact.created","timestamp":"2023-11-14T22:13:20Z","data":{"id":"c_1","email":"a@example.com"}}"#;
#[allow(dead_code)]
const STANDARD_SIGNATURE: &str = "v1,PlAd/tQx8zYcVJw7C4hNxE40G6MM8RiGAbALZElY990=";
#[allow(dead_code)]
const STANDARD_ROTATED_SIGNATURE: &str = "v1,l3vMna0YfI4ooh4V7qM0hy21vAVT6l1PYPbNJgTt4Pg=";
