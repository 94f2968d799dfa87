//! `/console`: the page and its two assets come from the binary with the content security
//! policy the issue names, need no key, and reference nothing outside eventsd. (The browser
//! test, `scripts/console-test.sh`, checks what the page does.)

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
    let cases = [
        ("/console", "text/html; charset=utf-8", "/console/console.js"),
        ("/console/", "text/html; charset=utf-8", "/console/console.css"),
        ("/console/console.js", "text/javascript; charset=utf-8", "textContent"),
        ("/console/console.css", "text/css; charset=utf-8", ":focus-visible"),
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
        assert!(body.contains(contains), "{path} should contain {contains:?}");
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
