//! `/console`: the page and its two assets come from the binary with the content security
//! policy the issue names, need no key, and reference nothing outside eventsd; the endpoints
//! section is in them, hidden until `/whoami` says the key is admin. (The browser test,
//! `scripts/console-test.sh`, checks what the page does.)

use crate::helpers::spawn_app_with_keys;
use crate::support::{http_client, HANG_GUARD};

const KEYS: &str = r#"
[[key]]
name = "console-admin"
key = "sk_console_admin"
scopes = ["admin"]
mode = "all"
"#;

#[tokio::test]
async fn the_console_and_its_assets_are_served_with_the_policy_and_no_key() {
    let (app, _keys) = spawn_app_with_keys(KEYS).await;
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "/console",
            "text/html; charset=utf-8",
            &["/console/console.js", r#"<li id="nav-endpoints-item" hidden>"#],
        ),
        ("/console/", "text/html; charset=utf-8", &["/console/console.css"]),
        (
            "/console/console.js",
            "text/javascript; charset=utf-8",
            &["textContent", "'/endpoints'", "/deliveries?", "'/deliveries/'", "/retry'"],
        ),
        ("/console/console.css", "text/css; charset=utf-8", &[":focus-visible", ".attempts"]),
    ];
    for (path, content_type, contains) in cases {
        let request = http_client().get(format!("{}{path}", app.http)).send();
        let response =
            tokio::time::timeout(HANG_GUARD, request).await.expect("hang guard").expect("send");
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let header = |name: &str| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
        };
        assert_eq!(header("content-type").as_deref(), Some(content_type), "{path}");
        assert_eq!(
            header("content-security-policy").as_deref(),
            Some("default-src 'self'"),
            "{path}"
        );
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{path}");
        let body = response.text().await.expect("body");
        for wanted in contains {
            assert!(body.contains(wanted), "{path} should contain {wanted:?}");
        }
        // Nothing from another origin, and no way for server text to become markup.
        for banned in [
            "http://",
            "https://",
            "//fonts",
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!body.contains(banned), "{path} contains {banned:?}");
        }
    }
}
