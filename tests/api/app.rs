//! The web app under `/app`: its page for every app path (deep links, reloads), its assets
//! from the binary, nothing loaded from outside.

use reqwest::{StatusCode, header};

use crate::helpers::{Backend, spawn_app};

/// No http(s) URL of another host: the app runs without a CDN or network.
fn assert_no_outside_urls(what: &str, body: &str) {
    for scheme in ["http://", "https://"] {
        for (i, _) in body.match_indices(scheme) {
            let rest = &body[i + scheme.len()..];
            // A host follows the scheme (a placeholder like `https://…` names none).
            let names_a_host = rest.starts_with(|c: char| c.is_ascii_alphanumeric());
            assert!(
                !names_a_host || rest.starts_with("127.0.0.1") || rest.starts_with("localhost"),
                "{what} refers to an outside URL: {}",
                &body[i..(i + 60).min(body.len())]
            );
        }
    }
}

#[tokio::test]
async fn app_pages_and_assets_are_served_from_the_binary() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in [
        "/app/",
        "/app/fans/1",
        "/app/messages/onlyfans/7",
        "/app/operator",
    ] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8",
            "{path}"
        );
        let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        let html = resp.text().await.unwrap();
        assert!(html.contains(r#"src="/app/assets/js/app.js""#), "{path}");
        assert_no_outside_urls(path, &html);
    }

    // Every module the page preloads is there, and loads nothing from outside either.
    let html = app
        .client
        .get(app.url("/app/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let modules: Vec<&str> = html
        .split(r#"rel="modulepreload" href=""#)
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert!(
        modules.len() >= 9,
        "the page preloads its modules: {modules:?}"
    );
    for module in modules {
        let resp = app.client.get(app.url(module)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{module}");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8",
            "{module}"
        );
        assert_no_outside_urls(module, &resp.text().await.unwrap());
    }

    let resp = app
        .client
        .get(app.url("/app/assets/js/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    let tag = resp.headers()[header::ETAG].clone();
    let js = resp.text().await.unwrap();
    let again = app
        .client
        .get(app.url("/app/assets/js/app.js"))
        .header(header::IF_NONE_MATCH, tag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "revalidated");
    assert!(js.contains("import "), "an ES module");
    assert_no_outside_urls("app.js", &js);

    let css = app
        .client
        .get(app.url("/app/assets/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), StatusCode::OK);
    assert_eq!(
        css.headers()[header::CONTENT_TYPE],
        "text/css; charset=utf-8"
    );
    assert_no_outside_urls("app.css", &css.text().await.unwrap());

    let missing = app
        .client
        .get(app.url("/app/assets/js/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // `/app` itself leads to the app's root, where its router takes over.
    let bare = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url("/app"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(bare.headers()[header::LOCATION], "/app/");
}
