//! Time to first render of the console's heavy pages, in a real headless Chromium:
//! the analyses page of a collaboration with 1,000 analyses, and the audit page (paginated) of
//! a chain with 100,000 entries, each against the same page of a small collaboration (10
//! analyses, 100 entries) run side by side as the baseline; and the in-browser verification of
//! the whole 100,000-entry chain.
//!
//! `cargo bench -p cleanroom-server --bench console` with `CLEANROOM_TEST_CHROMEDRIVER` set
//! (`eval "$(bash .ci/services)"`); it says so and does nothing without it. The time is the
//! page's own clock: from the start of navigation (a full page load) until the route has
//! rendered (`performance.now()` when `body[data-ready]` is set).

#[allow(dead_code)]
#[path = "../tests/it/webdriver.rs"]
mod webdriver;

use std::time::Instant;

use cleanroom_core::audit::Action;
use cleanroom_service::{CleanRoom, Config};
use serde_json::{Value, json};
use webdriver::Browser;

const RUNS: usize = 7;

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}/v1{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let st = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(st.is_success(), "{path}: {st} {v}");
        v
    }

    async fn upload(&self, token: &str, collab: &str, name: &str, csv: String) {
        let r = self
            .http
            .put(format!(
                "{}/v1/collaborations/{collab}/datasets/{name}/data",
                self.base
            ))
            .bearer_auth(token)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
}

fn people(prefix: &str, count: usize, offset: usize) -> String {
    let mut s = String::from("pid,email_hmac,city,n\n");
    for i in 0..count {
        s.push_str(&format!(
            "{prefix}-{i:06},h{:06},city{},{}\n",
            i + offset,
            i % 3,
            i % 5
        ));
    }
    s
}

/// A collaboration of brand and publisher with `analyses` analyses by the brand on the
/// publisher's data and `entries` entries in its audit chain; answers its id.
async fn collaboration(
    api: &Api,
    room: &CleanRoom,
    op: &str,
    tag: &str,
    analyses: usize,
    entries: u64,
) -> (String, String) {
    let org = |n: String| async move {
        let v = api
            .call(
                reqwest::Method::POST,
                "/orgs",
                op,
                json!({"name": n, "admin": "admin"}),
            )
            .await;
        v["token"].as_str().unwrap().to_owned()
    };
    let brand = org(format!("brand-{tag}")).await;
    let publisher = org(format!("publisher-{tag}")).await;
    let post = reqwest::Method::POST;
    let v = api
        .call(
            post.clone(),
            "/collaborations",
            &brand,
            json!({"name": format!("bench-{tag}")}),
        )
        .await;
    let id = v["collaboration"]["id"].as_str().unwrap().to_owned();
    api.call(
        post.clone(),
        &format!("/collaborations/{id}/invitations"),
        &brand,
        json!({"org": format!("publisher-{tag}"), "abilities": ["contribute", "analyse", "receive"]}),
    )
    .await;
    api.call(
        post.clone(),
        &format!("/collaborations/{id}/accept"),
        &publisher,
        json!(null),
    )
    .await;
    let columns = json!([
        {"name": "pid", "type": "string", "role": "privacy_unit"},
        {"name": "email_hmac", "type": "string", "role": "identifier"},
        {"name": "city", "type": "string", "role": "dimension"},
        {"name": "n", "type": "int64", "role": "metric"},
    ]);
    api.call(
        post.clone(),
        &format!("/collaborations/{id}/datasets"),
        &publisher,
        json!({"name": "aud", "columns": columns}),
    )
    .await;
    api.upload(&publisher, &id, "aud", people("user", 3000, 0))
        .await;
    api.call(
        reqwest::Method::PUT,
        &format!("/collaborations/{id}/datasets/aud/policy"),
        &publisher,
        json!({"join_keys": ["email_hmac"], "dimensions": ["city"],
               "metrics": [{"column": "n", "lower": 0, "upper": 10}],
               "analysts": [format!("brand-{tag}")], "receivers": [format!("brand-{tag}")]}),
    )
    .await;
    api.call(
        post.clone(),
        &format!("/collaborations/{id}/budgets"),
        &publisher,
        json!({"epsilon": 100.0, "epsilon_per_query": 1.0, "delta": 9e-4, "delta_per_query": 5e-7}),
    )
    .await;
    let t = Instant::now();
    for i in 0..analyses {
        // Distinct requests, so that each one is a new analysis with its own result.
        let sql = format!("SELECT city, COUNT(*) AS people_{i} FROM aud GROUP BY city");
        api.call(
            post.clone(),
            &format!("/collaborations/{id}/queries"),
            &brand,
            json!({"sql": sql, "epsilon": 0.05}),
        )
        .await;
    }
    eprintln!(
        "{tag}: {analyses} analyses in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let p = room.authenticate(Some(&brand)).await.unwrap();
    let t = Instant::now();
    let mut head = 0;
    loop {
        let page = api
            .call(
                reqwest::Method::GET,
                &format!("/audit/{id}?after=0&limit=1"),
                &brand,
                json!(null),
            )
            .await;
        let have = page["head"]["seq"].as_u64().unwrap_or(0);
        if have >= entries {
            head = head.max(have);
            break;
        }
        for _ in have..entries {
            room.record_rejection(
                &p,
                Action::AnalysisQuery,
                Some(&id),
                "policy_violation",
                "bench: a refused query",
            )
            .await;
        }
    }
    eprintln!(
        "{tag}: audit chain of {head} entries in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    (id, brand)
}

async fn sign_in(b: &Browser, base: &str, token: &str) {
    b.goto(&format!("{base}/#/signin")).await;
    b.fill("#token", token).await;
    b.click("#signin").await;
    b.wait_text("h1", "Collaborations").await;
}

/// Median milliseconds from navigation start to the rendered route `hash` over `RUNS` loads.
async fn render_ms(b: &Browser, base: &str, hash: &str) -> f64 {
    let mut ms = Vec::new();
    for _ in 0..RUNS {
        b.goto("about:blank").await;
        b.goto(&format!("{base}/{hash}")).await;
        let start = Instant::now();
        loop {
            let v = b
                .exec(
                    "return document.body && document.body.dataset.ready === arguments[0] ? Number(document.body.dataset.readyMs) : null",
                    json!([hash]),
                )
                .await;
            if let Some(x) = v.as_f64() {
                ms.push(x);
                break;
            }
            assert!(start.elapsed().as_secs() < 300, "{hash} never rendered");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

#[tokio::main]
async fn main() {
    let Some(b) = Browser::start("the console benchmark").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let room = CleanRoom::open(Config::new(dir.path().join("data")))
        .await
        .unwrap();
    let (_, _, op) = room.init_operator("operator", "admin").await.unwrap();
    let (listener, addr) = cleanroom_server::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cleanroom_server::serve(room.clone(), listener, async {
        let _ = stopped.await;
    }));
    let base = format!("http://{addr}");
    let api = Api {
        http: reqwest::Client::new(),
        base: base.clone(),
    };
    let big = std::env::var("CONSOLE_BENCH_ANALYSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let entries = std::env::var("CONSOLE_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let (small_id, small_brand) = collaboration(&api, &room, op.expose(), "small", 10, 100).await;
    let (big_id, big_brand) = collaboration(&api, &room, op.expose(), "big", big, entries).await;

    println!(
        "| page | small collaboration (10 analyses, 100 entries) | large ({big} analyses, {entries} entries) | ratio |"
    );
    println!("|---|---|---|---|");
    let mut rows = Vec::new();
    for (what, route) in [
        ("analyses", "analyses"),
        ("audit (first page of 200)", "audit"),
    ] {
        let hash = |id: &str| {
            if route == "audit" {
                format!("#/audit/{id}")
            } else {
                format!("#/c/{id}/{route}")
            }
        };
        sign_in(&b, &base, &small_brand).await;
        let small = render_ms(&b, &base, &hash(&small_id)).await;
        sign_in(&b, &base, &big_brand).await;
        let large = render_ms(&b, &base, &hash(&big_id)).await;
        rows.push((what, small, large));
    }
    for (what, small, large) in rows {
        println!(
            "| {what} | {small:.0} ms | {large:.0} ms | {:.2}× |",
            large / small
        );
    }
    // Verifying the whole chain in the page: every entry fetched and re-hashed.
    b.goto(&format!("{base}/#/audit/{big_id}")).await;
    b.find("#verify").await;
    let t = Instant::now();
    b.click("#verify").await;
    let text = b
        .wait_text_for("#verify-out", "every hash recomputed", 600)
        .await;
    println!(
        "\nverification of the {entries}-entry chain in the browser: {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        text.lines().next().unwrap_or_default()
    );

    // A large CSV uploaded from the browser's file picker: the browser streams the file, so
    // the page's JavaScript heap must stay flat however large the file is.
    let mb: u64 = std::env::var("CONSOLE_BENCH_UPLOAD_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let file = dir.path().join("bulk.csv");
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        writeln!(w, "pid,email_hmac,city,n").unwrap();
        let mut i: u64 = 0;
        let mut written = 0u64;
        while written < mb << 20 {
            let line = format!("person-{i:012},h{i:012},city{},{}\n", i % 7, i % 11);
            written += line.len() as u64;
            w.write_all(line.as_bytes()).unwrap();
            i += 1;
        }
        w.flush().unwrap();
    }
    let size = std::fs::metadata(&file).unwrap().len();
    api.call(
        reqwest::Method::POST,
        &format!("/collaborations/{big_id}/datasets"),
        &big_brand,
        json!({"name": "bulk", "columns": [
            {"name": "pid", "type": "string", "role": "privacy_unit"},
            {"name": "email_hmac", "type": "string", "role": "identifier"},
            {"name": "city", "type": "string", "role": "dimension"},
            {"name": "n", "type": "int64", "role": "metric"},
        ]}),
    )
    .await;
    b.goto(&format!("{base}/#/c/{big_id}/d/bulk")).await;
    b.find("#upload-file").await;
    let heap = "return [performance.memory ? performance.memory.usedJSHeapSize : null, \
                (document.querySelector('#upload-ok') || {}).innerText || null, \
                (document.querySelector('.problem') || {}).innerText || null]";
    let before = b.exec(heap, json!([])).await[0].as_f64().unwrap_or(0.0);
    b.fill("#upload-file", file.to_str().unwrap()).await;
    let t = Instant::now();
    b.click("#upload").await;
    let mut peak = before;
    let done = loop {
        let v = b.exec(heap, json!([])).await;
        peak = peak.max(v[0].as_f64().unwrap_or(0.0));
        if let Some(p) = v[2].as_str() {
            panic!("the upload failed: {p}");
        }
        if let Some(ok) = v[1].as_str() {
            break ok.to_owned();
        }
        assert!(t.elapsed().as_secs() < 1800, "the upload never finished");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let secs = t.elapsed().as_secs_f64();
    println!(
        "upload of a {:.0} MB CSV from the browser: {secs:.1} s, {:.0} MB/s ({done}); page JS heap {:.1} MB before, at most {:.1} MB during",
        size as f64 / 1e6,
        size as f64 / 1e6 / secs,
        before / 1e6,
        peak / 1e6
    );
    b.quit().await;
    let _ = stop.send(());
    let _ = server.await;
    room.close().await;
}
