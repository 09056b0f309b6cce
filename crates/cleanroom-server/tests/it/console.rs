//! The web console: its sessions and their defences over plain HTTP (always run), and a whole
//! collaboration driven in a real headless Chromium (run when `CLEANROOM_TEST_CHROMEDRIVER`
//! is set; `.ci/run` sets it and fails when the browser tests skip).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::webdriver::Browser;
use crate::*;

/// Signs in with `token`; answers the session cookie's value and the CSRF token.
async fn sign_in(s: &Server, token: &str) -> (String, String) {
    let r = s
        .http
        .post(format!("{}/console/session", s.base))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("cleanroom_session=")
        .unwrap()
        .to_owned();
    let body: Value = r.json().await.unwrap();
    (value, body["csrf"].as_str().unwrap().to_owned())
}

fn with_cookie(s: &Server, m: Method, path: &str, cookie: &str) -> reqwest::RequestBuilder {
    s.http
        .request(m, format!("{}{}", s.base, path))
        .header("cookie", format!("cleanroom_session={cookie}"))
}

async fn status_code(r: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let r = r.send().await.unwrap();
    let st = r.status();
    let text = r.text().await.unwrap();
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn sessions_are_cookies_with_csrf_and_every_answer_forbids_framing_and_inline_script() {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let publisher = s.org("publisher").await;
    let id = s
        .collab(&brand, &publisher, &["contribute", "analyse"])
        .await;
    let other = s.org("rival").await;

    // The console page and the API carry the same strict policy.
    for path in ["/", "/console/app.js", "/v1/health", "/v1/collaborations"] {
        let r = s
            .http
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
    }
    let page = s
        .http
        .get(&s.base)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<script>"), "no inline script: {page}");

    // Without a session: nothing but the sign-in form's shell.
    let (st, v) = status_code(s.http.get(format!("{}/console/session", s.base))).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    let (st, _) = status_code(s.http.get(format!("{}/v1/collaborations", s.base))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // A wrong token, or none, does not start a session.
    let r = s
        .http
        .post(format!("{}/console/session", s.base))
        .json(&json!({"token": "crt_00000000000000000000000000000000_00"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("set-cookie").is_none());
    // A sign-in posted from another site is refused (login CSRF).
    let (st, v) = status_code(
        s.http
            .post(format!("{}/console/session", s.base))
            .header("sec-fetch-site", "cross-site")
            .json(&json!({"token": brand})),
    )
    .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf_failed"))
    );

    let (cookie, csrf) = sign_in(&s, &brand).await;
    assert_ne!(
        cookie, brand,
        "the session is a token of its own, not the API token"
    );
    let (st, me) = status_code(with_cookie(&s, Method::GET, "/console/session", &cookie)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (me["org"].as_str(), me["csrf"].as_str()),
        (Some("brand"), Some(csrf.as_str()))
    );

    // Reading with the cookie works; changing state needs the CSRF token and this origin.
    let (st, list) = status_code(with_cookie(&s, Method::GET, "/v1/collaborations", &cookie)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let create = |csrf: Option<&str>, origin: Option<&str>| {
        let mut r = with_cookie(&s, Method::POST, "/v1/collaborations", &cookie)
            .json(&json!({"name": "forged"}));
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r
    };
    let (st, v) = status_code(create(None, None)).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf_failed"))
    );
    let (st, v) = status_code(create(Some("00"), None)).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf_failed"))
    );
    let (st, v) = status_code(create(Some(&csrf), Some("https://evil.example"))).await;
    assert_eq!(
        (st, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("csrf_failed"))
    );
    // An upload is a state change too.
    let (st, _) = status_code(
        with_cookie(
            &s,
            Method::PUT,
            &format!("/v1/collaborations/{id}/datasets/crm/data"),
            &cookie,
        )
        .header("content-type", "text/csv")
        .body(csv(10)),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let same_origin = s.base.clone();
    let (st, _) = status_code(create(Some(&csrf), Some(&same_origin))).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, list) = status_code(with_cookie(&s, Method::GET, "/v1/collaborations", &cookie)).await;
    assert_eq!(
        (st, list.as_array().unwrap().len()),
        (StatusCode::OK, 2),
        "only the one with the token was created"
    );

    // A session of one organisation cannot see or act on another's collaboration.
    let (rival_cookie, rival_csrf) = sign_in(&s, &other).await;
    let (st, _) = status_code(with_cookie(
        &s,
        Method::GET,
        &format!("/v1/collaborations/{id}"),
        &rival_cookie,
    ))
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = status_code(
        with_cookie(
            &s,
            Method::POST,
            &format!("/v1/collaborations/{id}/invitations"),
            &rival_cookie,
        )
        .header("x-csrf-token", &rival_csrf)
        .json(&json!({"org": "rival", "abilities": ["analyse"]})),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = status_code(with_cookie(
        &s,
        Method::GET,
        &format!("/v1/audit/{id}"),
        &rival_cookie,
    ))
    .await;
    assert!(
        st == StatusCode::NOT_FOUND || st == StatusCode::FORBIDDEN,
        "{st}"
    );
    // Another session's CSRF token does not work with this cookie.
    let (st, _) = status_code(create(Some(&rival_csrf), None)).await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Sign-out revokes the session; the cookie is cleared and no longer works.
    let r = with_cookie(&s, Method::DELETE, "/console/session", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (st, v) = status_code(with_cookie(&s, Method::GET, "/v1/collaborations", &cookie)).await;
    assert_eq!(
        (st, v["detail"].as_str()),
        (
            StatusCode::UNAUTHORIZED,
            Some("this token has been revoked")
        )
    );
    // The API token it was started with still works.
    s.ok(Method::GET, "/v1/collaborations", &brand, None).await;

    // Sessions are audited like tokens: started and ended, by whom, never with the secret.
    let entries = audit_after(&s, &s.op, "system", 0).await;
    let starts = entries
        .iter()
        .filter(|e| e["action"] == "session.start")
        .count();
    let ends: Vec<_> = entries
        .iter()
        .filter(|e| e["action"] == "session.end")
        .collect();
    assert_eq!((starts, ends.len()), (2, 1), "{entries:?}");
    assert!(
        ends[0]["actor"].as_str().unwrap().contains("brand"),
        "{:?}",
        ends[0]
    );
    let all = serde_json::to_string(&entries).unwrap();
    assert!(
        !all.contains(&cookie[cookie.len() - 64..]),
        "a session secret in the audit log"
    );
}

#[tokio::test]
async fn an_expired_session_is_refused() {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let (cookie, _) = sign_in(&s, &brand).await;
    let (st, _) = status_code(with_cookie(&s, Method::GET, "/v1/collaborations", &cookie)).await;
    assert_eq!(st, StatusCode::OK);
    let (s, changed) = s
        .restart_editing(
            "UPDATE tokens SET expires_at = '2020-01-01T00:00:00.000Z' WHERE expires_at IS NOT NULL",
            &[],
        )
        .await;
    assert_eq!(changed, 1);
    let (st, v) = status_code(with_cookie(&s, Method::GET, "/v1/collaborations", &cookie)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(v["detail"].as_str().unwrap().contains("expired"), "{v}");
    s.ok(Method::GET, "/v1/collaborations", &brand, None).await;
}

/// A session lives no longer than the API token it was started with: revoking that token ends
/// the session at once, and the token list names the session's parent.
#[tokio::test]
async fn revoking_the_token_a_session_was_started_with_ends_the_session() {
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let extra = s
        .ok(
            Method::POST,
            "/v1/tokens",
            &brand,
            Some(json!({"label": "laptop"})),
        )
        .await;
    let (extra_id, extra_secret) = (
        extra["id"].as_str().unwrap().to_owned(),
        extra["token"].as_str().unwrap().to_owned(),
    );
    let (cookie, _) = sign_in(&s, &extra_secret).await;
    let (st, _) = status_code(with_cookie(&s, Method::GET, "/v1/collaborations", &cookie)).await;
    assert_eq!(st, StatusCode::OK);
    let tokens = s.ok(Method::GET, "/v1/tokens", &brand, None).await;
    let session = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["parent"].as_str() == Some(extra_id.as_str()))
        .unwrap_or_else(|| panic!("no session names its parent: {tokens:#}"));
    assert!(session["expires_at"].is_string(), "{session}");
    s.ok(
        Method::DELETE,
        &format!("/v1/tokens/{extra_id}"),
        &brand,
        None,
    )
    .await;
    let (st, v) = status_code(with_cookie(&s, Method::GET, "/v1/collaborations", &cookie)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("revoked"), "{v}");
    // The organisation's other token is untouched.
    s.ok(Method::GET, "/v1/collaborations", &brand, None).await;
}

fn people_csv(prefix: &str, count: usize, offset: usize) -> String {
    let mut s = String::from("pid,email_hmac,city,n\n");
    for i in 0..count {
        s.push_str(&format!(
            "{prefix}-{i:06},secret-hash-{:06},city{},{}\n",
            i + offset,
            i % 3,
            i % 5
        ));
    }
    s
}

const COLUMNS: &str =
    "pid:string:privacy_unit\nemail_hmac:string:identifier\ncity:string:dimension\nn:int64:metric";

async fn browser_sign_in(b: &Browser, base: &str, token: &str) {
    b.goto(&format!("{base}/#/signin")).await;
    b.fill("#token", token).await;
    b.click("#signin").await;
    b.wait_text("h1", "Collaborations").await;
}

async fn browser_sign_out(b: &Browser) {
    b.click("#signout").await;
    b.wait_text("h1", "Sign in").await;
}

/// One party's dataset from the browser: declared, uploaded from a file, its policy set, budget
/// granted (confirmed), the overlap template approved.
async fn contribute(
    b: &Browser,
    base: &str,
    id: &str,
    name: &str,
    file: &std::path::Path,
    partner: &str,
    activation_partner: Option<&str>,
) {
    // Screenshots of the first party's pages only.
    let shots = activation_partner.is_some();
    b.goto(&format!("{base}/#/c/{id}/datasets")).await;
    b.fill("#ds-name", name).await;
    b.set_value("#ds-columns", COLUMNS).await;
    b.click("#create-dataset").await;
    b.wait_text("h2", &format!("Dataset {name}")).await;
    b.fill("#upload-file", file.to_str().unwrap()).await;
    b.click("#upload").await;
    b.wait_text("#upload-ok", "Uploaded: 3,000 rows").await;
    let progress = b
        .exec(
            "return document.querySelector('#upload-progress').value",
            json!([]),
        )
        .await;
    assert_eq!(progress, json!(100));
    b.wait_text("#ds-status", "ready").await;
    // The policy form: a refusal is shown next to the field it is about, as a sentence.
    b.click("#pf-metric-n").await;
    b.fill("#pf-metric-n-upper", "10").await;
    b.fill("#pf-k", "1").await;
    b.click("#save-policy").await;
    let err = b.wait_text("#pf-err-k", "min_group_size").await;
    assert!(!err.contains('{'), "a sentence, not JSON: {err}");
    b.fill("#pf-metric-n-upper", "-5").await;
    b.fill("#pf-k", "20").await;
    b.click("#save-policy").await;
    b.wait_text("#pf-err-metric-n", "lower ≤ upper").await;
    b.fill("#pf-metric-n-upper", "10").await;
    b.fill("#pf-analysts", partner).await;
    b.fill("#pf-receivers", partner).await;
    if let Some(p) = activation_partner {
        b.click("#pf-activation").await;
        b.fill("#pf-partners", p).await;
        b.fill("#pf-min-segment", "20").await;
        b.click("#pf-act-dim-city").await;
    }
    b.click("#save-policy").await;
    let words = b
        .wait_text("#policy-words", "May be joined on: email_hmac")
        .await;
    assert!(words.contains("at least 20 people"), "{words}");
    assert!(
        words.contains("n (sum, avg, clamped to [0, 10])"),
        "{words}"
    );
    if shots {
        b.exec(
            "document.querySelector('#policy-words').scrollIntoView()",
            json!([]),
        )
        .await;
        b.screenshot("dataset-policy").await;
    }
    b.goto(&format!("{base}/#/c/{id}/budgets")).await;
    b.fill("#grant-epsilon", "3").await;
    b.fill("#grant-per-query", "1").await;
    b.click("#grant").await; // the confirmation is accepted
    b.wait_text(".cards", "left 3").await;
    if shots {
        b.screenshot("budgets").await;
    }
    b.goto(&format!("{base}/#/c/{id}/templates")).await;
    b.click(&format!("#approve-overlap-{name}")).await;
    b.wait_text("#template-overlap", &format!("{name} (by"))
        .await;
}

#[tokio::test]
async fn a_whole_collaboration_in_a_real_browser() {
    let Some(b) = Browser::start("the console's browser tests").await else {
        return;
    };
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let publisher = s.org("publisher").await;
    let files = tempfile::tempdir().unwrap();
    let crm = files.path().join("crm.csv");
    let aud = files.path().join("aud.csv");
    std::fs::write(&crm, people_csv("person", 3000, 0)).unwrap();
    std::fs::write(&aud, people_csv("user", 3000, 1000)).unwrap();
    let base = s.base.clone();

    // No page without a session: the console asks to sign in.
    b.goto(&format!("{base}/#/")).await;
    b.wait_text("h1", "Sign in").await;
    b.screenshot("sign-in").await;

    // The brand creates the collaboration and invites the publisher.
    browser_sign_in(&b, &base, &brand).await;
    // The token is not kept anywhere the page can read.
    let stored = b
        .exec(
            "return JSON.stringify([localStorage, sessionStorage, document.cookie])",
            json!([]),
        )
        .await;
    assert!(!stored.as_str().unwrap().contains("crt_"), "{stored}");
    let cookies = b.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == "cleanroom_session")
        .expect("session cookie");
    assert_eq!(
        (session["httpOnly"].as_bool(), session["sameSite"].as_str()),
        (Some(true), Some("Strict"))
    );
    let session_value = session["value"].as_str().unwrap().to_owned();
    b.fill("#collab-name", "spring").await;
    b.fill("#collab-desc", "overlap, spring").await;
    b.click("#create-collab").await;
    b.wait_text("h1", "spring").await;
    let id = b
        .exec("return location.hash.split('/')[2]", json!([]))
        .await
        .as_str()
        .unwrap()
        .to_owned();
    b.fill("#invite-org", "publisher").await;
    b.click("#invite").await;
    b.wait_text("main table", "publisher").await;
    b.screenshot("collaboration").await;
    contribute(&b, &base, &id, "crm", &crm, "brand", Some("publisher")).await;
    browser_sign_out(&b).await;
    // The session is gone on the server too.
    let (st, _) = status_code(with_cookie(
        &s,
        Method::GET,
        "/v1/collaborations",
        &session_value,
    ))
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // The publisher accepts and contributes.
    browser_sign_in(&b, &base, &publisher).await;
    b.goto(&format!("{base}/#/c/{id}")).await;
    b.click("#accept").await;
    b.wait_text("main table", "active").await;
    contribute(&b, &base, &id, "aud", &aud, "brand", None).await;
    browser_sign_out(&b).await;

    // The brand prices and runs an overlap from the template's form.
    browser_sign_in(&b, &base, &brand).await;
    b.goto(&format!("{base}/#/c/{id}/templates")).await;
    b.click("#run-overlap summary").await;
    b.fill("#param-overlap-left", "crm").await;
    b.fill("#param-overlap-right", "aud").await;
    b.fill("#param-overlap-key", "email_hmac").await;
    b.fill("#param-overlap-by", "city").await;
    b.fill("#overlap-epsilon", "0.8").await;
    b.click("#overlap-dry-run").await;
    b.wait_text("#plan", "Price: ε 0.8").await;
    b.screenshot("template-run").await;
    b.click("#overlap-run").await;
    b.wait_text("#analysis-status", "released").await;
    let stacked = b
        .exec(
            "return document.querySelectorAll('svg.chart.overlap rect').length",
            json!([]),
        )
        .await;
    assert_eq!(stacked, json!(6), "a stacked bar (matched, rest) per city");
    // The chart, with error bars from the noise's known scale and the interval's level.
    let bars = b
        .exec(
            "return document.querySelectorAll('svg.chart .error-bar').length",
            json!([]),
        )
        .await;
    assert!(bars.as_u64().unwrap() >= 3, "error bars: {bars}");
    b.wait_text("#interval-note", "95 %").await;
    // How many groups were left out is said, as a noisy estimate with its spread.
    let left_out = b.wait_text(".left-out", "left out").await;
    assert!(
        left_out.starts_with("About ") && left_out.contains("noisy estimate, ±"),
        "{left_out}"
    );
    b.screenshot("analysis").await;
    // Download as CSV: the link's file holds the table shown.
    let csv = b
        .exec(
            "const a = document.querySelector('a.download-csv'); return [a.download, decodeURIComponent(a.href.split(',').slice(1).join(','))]",
            json!([]),
        )
        .await;
    assert!(csv[0].as_str().unwrap().ends_with(".csv"), "{csv}");
    let text = csv[1].as_str().unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("city,"), "{text}");
    assert_eq!(lines.count(), 3, "{text}");

    // The lift's interval comes from the counts' noise by the delta method, and a benchmark
    // shows the member against its peers (drawn from results of those shapes).
    let charts = b
        .exec(
            "const c = (n, k, sd) => ({ name: n, kind: k, noise_sd: sd }); \
             const arms = { name: 'conversions', columns: [c('exposed', 'group'), c('people', 'count', 10), c('converters', 'count', 10), c('conversion_rate', 'value')], \
                            rows: [[true, 1000, 100, 0.1], [false, 1000, 50, 0.05]] }; \
             const lift = { name: 'lift', columns: [c('exposed_rate', 'value'), c('absolute_lift', 'value')], rows: [[0.1, 0.05]] }; \
             const l = liftChart([arms, lift]); \
             const bm = { name: 'yours', columns: [c('region', 'group'), c('your_average', 'value'), c('peers_average', 'value')], rows: [['north', 5, 7], ['south', 9, 8]] }; \
             const b = benchmarkChart([bm]); \
             return [l[2].textContent, b[1].querySelectorAll('rect').length, b[1].querySelectorAll('circle').length]",
            json!([]),
        )
        .await;
    assert!(
        charts[0]
            .as_str()
            .unwrap()
            .contains("interval 2.16 pts to 7.84 pts"),
        "{charts}"
    );
    assert_eq!(
        (charts[1].clone(), charts[2].clone()),
        (json!(2), json!(2)),
        "{charts}"
    );

    // A refusal names its rule and column.
    b.goto(&format!("{base}/#/c/{id}/sql")).await;
    b.set_value(
        "#sql",
        "SELECT email_hmac, COUNT(*) FROM crm GROUP BY email_hmac",
    )
    .await;
    b.click("#sql-dry-run").await;
    let refusal = b.wait_text("#sql-out", "identifier_not_allowed").await;
    assert!(refusal.contains("Column: email_hmac"), "{refusal}");
    b.screenshot("sql-refusal").await;

    // The analyses list and the budgets' history show the run.
    b.goto(&format!("{base}/#/c/{id}/analyses")).await;
    b.wait_text("main table", "template").await;
    b.screenshot("analyses").await;

    // A page whose data arrives late never replaces the page opened after it: the analyses
    // list is held back 1.5 s while the user moves on to the budgets.
    b.goto(&format!("{base}/#/c/{id}")).await;
    b.exec(
        "const f = window.fetch; window.__fetch = f; \
         window.fetch = (u, o) => String(u).includes('order=newest') \
           ? new Promise(r => setTimeout(() => r(f(u, o)), 1500)) : f(u, o); return true",
        json!([]),
    )
    .await;
    let (analyses, budgets) = (format!("#/c/{id}/analyses"), format!("#/c/{id}/budgets"));
    b.exec(
        "location.hash = arguments[0]; return true",
        json!([analyses]),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    b.exec(
        "location.hash = arguments[0]; return true",
        json!([budgets]),
    )
    .await;
    b.find(".gauge").await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let state = b
        .exec(
            "return [document.body.dataset.ready, !!document.querySelector('main .gauge'), !!document.querySelector('#analyses-count')]",
            json!([]),
        )
        .await;
    assert_eq!(
        state,
        json!([budgets, true, false]),
        "the late page stayed away"
    );
    b.exec("window.fetch = window.__fetch; return true", json!([]))
        .await;

    // The audit chain, verified in the page, with the head the server reports.
    b.goto(&format!("{base}/#/audit/{id}")).await;
    b.click("#verify").await;
    let verified = b
        .wait_text("#verified", "every hash recomputed here matches")
        .await;
    let shown_head = b.text("#verified-head").await;
    let page = s
        .ok(
            Method::GET,
            &format!("/v1/audit/{id}?after=0&limit=1"),
            &brand,
            None,
        )
        .await;
    let head = page["head"]["hash"].as_str().unwrap();
    // The page verified the chain as it was when it fetched it; the server's head may only have
    // moved on by the audit reads since.
    let all = audit_after(&s, &brand, &id, 0).await;
    assert!(
        all.iter().any(|e| e["hash"] == shown_head.trim()),
        "{verified} / {head}"
    );
    b.screenshot("audit").await;
    // The page's own hashing is the core crate's: every entry's hash recomputes, and an entry
    // whose detail or link was altered does not.
    let check = b
        .exec(
            "return (async () => { \
               const r = await fetch('/v1/audit/' + arguments[0] + '?after=0&limit=10000'); \
               const es = (await r.json()).entries; const out = []; \
               for (const e of es) out.push(await entryHash(e) === e.hash); \
               const t = { ...es[3], detail: es[3].detail + ' ' }; \
               const l = { ...es[4], prev_hash: es[2].hash }; \
               return [out.every(Boolean), out.length, await entryHash(t) === t.hash, await entryHash(l) === l.hash]; })()",
            json!([id]),
        )
        .await;
    assert_eq!(check[0], json!(true), "{check}");
    assert!(check[1].as_u64().unwrap() >= 15, "{check}");
    assert_eq!(
        (check[2].clone(), check[3].clone()),
        (json!(false), json!(false)),
        "{check}"
    );

    // On a phone's width the pages still lay out.
    b.set_window(390, 844).await;
    b.goto(&format!("{base}/#/c/{id}/budgets")).await;
    b.wait_text(".cards", "granted").await;
    let overflow = b
        .exec(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
            json!([]),
        )
        .await;
    assert_eq!(
        overflow,
        json!(true),
        "the budgets page scrolls sideways on a phone"
    );
    b.screenshot("budgets-phone").await;
    b.set_window(1280, 900).await;

    // Activation: the publisher asks for the brand's customers in city0 as its own
    // identifiers, the brand approves, the publisher downloads the segment once.
    browser_sign_out(&b).await;
    browser_sign_in(&b, &base, &publisher).await;
    let activations = format!("{base}/#/c/{id}/activations");
    b.goto(&activations).await;
    b.fill("#act-source", "crm").await;
    b.fill("#act-target", "aud").await;
    b.fill("#act-key", "email_hmac").await;
    b.fill("#act-output", "email_hmac").await;
    b.fill("#act-filter", "city=city0").await;
    b.click("#request-activation").await;
    b.wait_text("main table", "pending").await;
    let list = s
        .ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/activations"),
            &publisher,
            None,
        )
        .await;
    let act = list[0]["id"].as_str().unwrap().to_owned();
    browser_sign_out(&b).await;
    browser_sign_in(&b, &base, &brand).await;
    b.goto(&activations).await;
    b.click(&format!("#approve-{act}")).await;
    b.wait_text(&format!("#status-{act}"), "approved").await;
    b.screenshot("activations").await;
    browser_sign_out(&b).await;
    browser_sign_in(&b, &base, &publisher).await;
    b.goto(&activations).await;
    b.click(&format!("#download-{act}")).await;
    b.wait_text(&format!("#status-{act}"), "delivered").await;
    let a = s
        .ok(
            Method::GET,
            &format!("/v1/collaborations/{id}/activations/{act}"),
            &publisher,
            None,
        )
        .await;
    assert!(a["delivered"].as_u64().unwrap() >= 20, "{a}");

    browser_sign_out(&b).await;
    b.goto(&format!("{base}/#/c/{id}")).await;
    b.wait_text("h1", "Sign in").await;
    b.quit().await;
}

/// A collaboration as `token`'s organisation sees it through the API.
async fn collaboration(s: &Server, token: &str, id: &str) -> Value {
    s.ok(
        Method::GET,
        &format!("/v1/collaborations/{id}"),
        token,
        None,
    )
    .await
}

/// The console without a mouse, and its two irreversible refusals of a collaboration: the
/// brand signs in, creates and invites by keyboard alone (Tab and Enter); the publisher
/// declines; closing asks first, naming what is destroyed, and a "no" changes nothing.
#[tokio::test]
async fn decline_close_and_the_keyboard_alone_in_a_real_browser() {
    let Some(b) = Browser::start("the console's keyboard and closing tests").await else {
        return;
    };
    let s = Server::start().await;
    let brand = s.org("brand").await;
    let publisher = s.org("publisher").await;
    let base = s.base.clone();
    const ENTER: &str = "\u{E007}";

    // Sign in: the token field has the focus; type and press Enter.
    b.goto(&format!("{base}/#/signin")).await;
    b.wait_text("h1", "Sign in").await;
    assert_eq!(b.focused().await, "token");
    b.type_keys(&format!("{brand}{ENTER}")).await;
    b.wait_text("h1", "Collaborations").await;
    // Create a collaboration: Tab to each field, type, Tab to the button, Enter.
    b.tab_to("collab-name").await;
    b.type_keys("autumn").await;
    b.tab_to("create-collab").await;
    b.type_keys(ENTER).await;
    b.wait_text("h1", "autumn").await;
    let id = b
        .exec("return location.hash.split('/')[2]", json!([]))
        .await
        .as_str()
        .unwrap()
        .to_owned();
    // Invite, by keyboard: the ability boxes are reached and toggled with Space.
    b.tab_to("invite-org").await;
    b.type_keys("publisher").await;
    b.tab_to("ability-receive").await;
    b.type_keys(" ").await;
    b.tab_to("invite").await;
    // A focused control is visibly marked (an outline or a ring).
    let ring = b
        .exec(
            "const s = getComputedStyle(document.activeElement); return s.outlineStyle !== 'none' || s.boxShadow !== 'none'",
            json!([]),
        )
        .await;
    assert_eq!(ring, json!(true), "the focus is invisible");
    b.type_keys(ENTER).await;
    b.wait_text("main table", "publisher").await;
    let members = collaboration(&s, &brand, &id).await;
    let invited = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["org"] == "publisher")
        .unwrap()
        .clone();
    assert_eq!(
        invited["abilities"],
        json!(["contribute", "analyse"]),
        "{invited}"
    );
    b.click("#signout").await;
    b.wait_text("h1", "Sign in").await;

    // The publisher declines.
    browser_sign_in(&b, &base, &publisher).await;
    b.goto(&format!("{base}/#/c/{id}")).await;
    b.click("#decline").await;
    let start = std::time::Instant::now();
    loop {
        let c = collaboration(&s, &brand, &id).await;
        let status = c["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["org"] == "publisher")
            .unwrap()["status"]
            .clone();
        if status == "declined" {
            break;
        }
        assert!(start.elapsed().as_secs() < 20, "never declined: {c}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    browser_sign_out(&b).await;

    // The brand closes it: asked first, with what is destroyed named; "no" changes nothing.
    s.declare(&brand, &id, "crm").await;
    browser_sign_in(&b, &base, &brand).await;
    b.goto(&format!("{base}/#/c/{id}")).await;
    b.find("#close").await;
    b.exec(
        "window.__asked = []; window.__answer = false; \
         window.confirm = m => { window.__asked.push(m); return window.__answer; }",
        json!([]),
    )
    .await;
    b.click("#close").await;
    let asked = b.exec("return window.__asked", json!([])).await;
    let question = asked[0].as_str().unwrap_or_default().to_owned();
    for words in [
        "\"autumn\"",
        "destroys the encryption keys of its 1 dataset(s)",
        "can never be read again",
        "The audit log stays",
    ] {
        assert!(question.contains(words), "{question}");
    }
    let c = collaboration(&s, &brand, &id).await;
    assert_eq!(c["collaboration"]["status"], "open", "{c}");
    b.exec("window.__answer = true", json!([])).await;
    b.click("#close").await;
    b.wait_text("#flash", "Closed: 1 dataset key(s) destroyed")
        .await;
    // The page shows the collaboration as closed, with nothing left to invite or close.
    b.wait_text("h1", "closed").await;
    let left = b
        .exec(
            "return [!!document.querySelector('#invite'), !!document.querySelector('#close')]",
            json!([]),
        )
        .await;
    assert_eq!(left, json!([false, false]));
    let c = collaboration(&s, &brand, &id).await;
    assert_eq!(c["collaboration"]["status"], "closed", "{c}");
    b.screenshot("closed").await;
    b.quit().await;
}
