//! What we sign (`webhooks_out::signing`) is accepted by the Standard Webhooks reference library,
//! the one a subscriber's receiver uses, and not only by our own `verify`: each case is handed to
//! `scripts/verify_standard_webhook.py`, which runs PyPI `standardwebhooks` from `.tools/venv`.
//!
//! The library is installed into .tools/venv on first use (`scripts/install-tools.sh
//! standardwebhooks`); if it cannot be, these tests fail rather than skip: a silent skip would
//! let the signature drift from the standard unseen.
//!
//! Nothing here touches the network; Python only reads stdin.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use refund_service::webhooks_out::signing::{
    self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, WebhookSecret,
};
use serde_json::json;

/// `.tools/venv/bin/python`, once it imports `standardwebhooks` (installed on first use by
/// `scripts/install-tools.sh standardwebhooks`, as the other tests install their tools).
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = root.join(".tools/venv/bin/python");
        let has_it = |python: &Path| {
            Command::new(python)
                .args(["-c", "import standardwebhooks"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !has_it(&python) {
            let status = Command::new(root.join("scripts/install-tools.sh"))
                .arg("standardwebhooks")
                .status()
                .expect("run scripts/install-tools.sh standardwebhooks");
            assert!(
                status.success(),
                "scripts/install-tools.sh standardwebhooks failed"
            );
        }
        assert!(
            has_it(&python),
            "{} cannot import `standardwebhooks` after installing it",
            python.display()
        );
        python
    })
}

/// What the reference library made of one webhook.
#[derive(Debug)]
pub(crate) enum Verdict {
    Accepted,
    /// Refused, with the library's error.
    Refused(String),
}

/// Runs the reference library's `Webhook(secret).verify(body, headers)` on one webhook.
pub(crate) fn reference_verify(
    secret: &str,
    id: &str,
    timestamp: i64,
    signature: &str,
    body: &str,
) -> Verdict {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/verify_standard_webhook.py");
    let input = json!({
        "secret": secret,
        "headers": {
            HEADER_ID: id,
            HEADER_TIMESTAMP: timestamp.to_string(),
            HEADER_SIGNATURE: signature,
        },
        "body": body,
    });
    let mut child = Command::new(python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start scripts/verify_standard_webhook.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write the webhook to the script");
    let out = child.wait_with_output().expect("wait for the script");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Verdict::Accepted,
        Some(1) => Verdict::Refused(stderr),
        other => panic!("scripts/verify_standard_webhook.py failed ({other:?}): {stderr}"),
    }
}

/// Now, in unix seconds: the library refuses timestamps more than 5 minutes away from its clock.
fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit in i64")
}

fn assert_accepted(verdict: Verdict) {
    assert!(matches!(verdict, Verdict::Accepted), "{verdict:?}");
}

/// Refused for its signature, not for anything else (headers, timestamp, a broken install).
fn assert_signature_refused(verdict: Verdict) {
    match verdict {
        Verdict::Refused(err) => assert!(err.contains("No matching signature"), "{err}"),
        Verdict::Accepted => panic!("the reference library accepted a webhook it should refuse"),
    }
}

#[test]
fn reference_library_accepts_a_unicode_body() {
    let secret = WebhookSecret::generate();
    let id = "evt_01JZ8Q7Y2W3X4V5T6S7R8P9N0M";
    let ts = now();
    // Multi-byte UTF-8 in every width, an escaped quote, a newline: the signature is over bytes.
    let body = r#"{"type":"refund.succeeded","data":{"note":"Rückerstattung – 返金 – 🧾 \"ok\"","amount":1299}}"#
        .to_owned()
        + "\n";
    let header = signing::sign(id, ts, body.as_bytes(), std::slice::from_ref(&secret));
    assert_accepted(reference_verify(&secret.expose(), id, ts, &header, &body));
}

#[test]
fn during_a_rotation_either_secret_alone_verifies() {
    let (old, new) = (WebhookSecret::generate(), WebhookSecret::generate());
    let id = "evt_rotation";
    let ts = now();
    let body = r#"{"type":"refund.failed","data":{"id":"rf_1"}}"#;
    let header = signing::sign(id, ts, body.as_bytes(), &[old.clone(), new.clone()]);
    assert_eq!(header.split(' ').count(), 2, "{header}");
    // A receiver that still holds the old secret, and one that already has the new one.
    assert_accepted(reference_verify(&old.expose(), id, ts, &header, body));
    assert_accepted(reference_verify(&new.expose(), id, ts, &header, body));
    // One holding neither does not.
    let stranger = WebhookSecret::generate();
    assert_signature_refused(reference_verify(&stranger.expose(), id, ts, &header, body));
}

#[test]
fn reference_library_refuses_a_tampered_webhook() {
    let secret = WebhookSecret::generate();
    let id = "evt_tamper";
    let ts = now();
    let body = r#"{"type":"refund.succeeded","data":{"amount":1299}}"#;
    let header = signing::sign(id, ts, body.as_bytes(), std::slice::from_ref(&secret));
    // The control: untouched, it passes, so the refusals below are about the changes.
    assert_accepted(reference_verify(&secret.expose(), id, ts, &header, body));
    let tampered = body.replace("1299", "9999");
    assert_signature_refused(reference_verify(
        &secret.expose(),
        id,
        ts,
        &header,
        &tampered,
    ));
    assert_signature_refused(reference_verify(
        &secret.expose(),
        "evt_other",
        ts,
        &header,
        body,
    ));
    assert_signature_refused(reference_verify(
        &secret.expose(),
        id,
        ts - 1,
        &header,
        body,
    ));
}

#[test]
fn reference_library_reads_our_secrets_with_and_without_padding() {
    // 32-byte keys end in '='; the unpadded form is the same key to us and to the library.
    let secret = WebhookSecret::generate();
    let exposed = secret.expose();
    let unpadded = exposed.trim_end_matches('=');
    assert_ne!(unpadded, exposed);
    let id = "evt_padding";
    let ts = now();
    let body = "{}";
    let header = signing::sign(id, ts, body.as_bytes(), std::slice::from_ref(&secret));
    assert_accepted(reference_verify(&exposed, id, ts, &header, body));
    assert_accepted(reference_verify(unpadded, id, ts, &header, body));
}
