//! A small W3C WebDriver client (shared by the console's tests and `benches/console.rs`) over HTTP (reqwest), driving Debian's `chromium` headless
//! through `chromedriver`. The browser tests need `CLEANROOM_TEST_CHROMEDRIVER` (the driver's
//! path, set by `.ci/services`); without it they say loudly that they skipped.

use cleanroom_testkit::net::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const ENV: &str = "CLEANROOM_TEST_CHROMEDRIVER";

/// Where the browser tests leave their screenshots (the README names this folder).
pub fn screenshot_dir() -> std::path::PathBuf {
    std::env::var_os("CLEANROOM_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/console-screenshots")
        })
}

pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// A headless Chromium, or `None` after saying on stderr that `what` did not run.
    pub async fn start(what: &str) -> Option<Browser> {
        let Some(driver_path) = std::env::var_os(ENV) else {
            eprintln!(
                "SKIPPED: {ENV} not set — {what} not run (install chromium and chromium-driver, \
                 then run `eval \"$(bash .ci/services)\"`)"
            );
            return None;
        };
        let chromium = std::env::var("CLEANROOM_TEST_CHROMIUM")
            .unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
        let port = free_port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{ENV} is set but chromedriver does not start: {e}"));
        // The client has no TLS provider of its own (it talks to chromedriver over plain HTTP).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready
                && r.status().is_success()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not answer on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "accept",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,900",
                    "--enable-precise-memory-info",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromium did not start: {r}"))
            .to_owned();
        Some(Browser {
            driver,
            http,
            base,
            session,
            _profile: profile,
        })
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let mut tries = 0;
        loop {
            let mut r = self.http.request(method.clone(), &url);
            if let Some(b) = &body {
                r = r.json(b);
            }
            let v: Value = r.send().await.unwrap().json().await.unwrap();
            let Some(err) = v["value"].get("error") else {
                return v["value"].clone();
            };
            // A confirmation the page opens after an await (the console's "Run this analysis
            // for ε …?") can appear while the next command runs: ChromeDriver then accepts it
            // (unhandledPromptBehavior) and fails that command. The command did not act, so it
            // is sent again.
            if err == "unexpected alert open" && tries < 3 {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            panic!("webdriver {path}: {err} {}", v["value"]["message"]);
        }
    }

    async fn try_cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Option<Value> {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let v: Value = self
            .http
            .request(method, url)
            .json(&body)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        if v["value"].get("error").is_some() {
            None
        } else {
            Some(v["value"].clone())
        }
    }

    /// Navigates to `url`; for a console route (`…/#/…`), waits until that route has rendered
    /// (`body[data-ready]` names it) or the console sent the browser elsewhere (to sign in), so
    /// the next step does not act on the page being replaced.
    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
        let Some((_, route)) = url.split_once('#') else {
            return;
        };
        let want = format!("#{route}");
        let start = Instant::now();
        loop {
            let settled = self
                .exec(
                    "return location.hash !== arguments[0] || document.body.dataset.ready === arguments[0]",
                    json!([want]),
                )
                .await;
            if settled == json!(true) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{want} never finished rendering"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The element `css` selects, waiting up to 20 s for it to appear.
    pub async fn find(&self, css: &str) -> String {
        let start = Instant::now();
        loop {
            let found = self
                .try_cmd(
                    reqwest::Method::POST,
                    "/element",
                    json!({"using": "css selector", "value": css}),
                )
                .await;
            if let Some(v) = found {
                return v[ELEMENT].as_str().unwrap().to_owned();
            }
            if start.elapsed() > Duration::from_secs(20) {
                let text = self.text("body").await;
                panic!("no element {css:?} after 20 s; the page says: {text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Clears the field `css` and types `text` into it (for a file input: the file's path).
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        let is_file = self
            .exec("return arguments[0].type === 'file'", json!([{ELEMENT: e}]))
            .await;
        if is_file != json!(true) {
            let cleared = self
                .try_cmd(
                    reqwest::Method::POST,
                    &format!("/element/{e}/clear"),
                    json!({}),
                )
                .await;
            assert!(cleared.is_some(), "cannot clear {css:?}");
        }
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Types `keys` on the keyboard, wherever the focus is (W3C key actions; `\u{E004}` is Tab,
    /// `\u{E007}` Enter).
    pub async fn type_keys(&self, keys: &str) {
        let mut actions = Vec::new();
        for k in keys.chars() {
            actions.push(json!({"type": "keyDown", "value": k.to_string()}));
            actions.push(json!({"type": "keyUp", "value": k.to_string()}));
        }
        self.cmd(
            reqwest::Method::POST,
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        )
        .await;
    }

    /// The id of the focused element (empty when it has none).
    pub async fn focused(&self) -> String {
        let v = self
            .exec(
                "return document.activeElement ? document.activeElement.id : ''",
                json!([]),
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Presses Tab until the element with id `id` has the focus (at most 80 times).
    pub async fn tab_to(&self, id: &str) {
        let mut seen = Vec::new();
        for _ in 0..80 {
            let now = self.focused().await;
            if now == id {
                return;
            }
            seen.push(now);
            self.type_keys("\u{E004}").await;
        }
        panic!("Tab never reached #{id}; it went through {seen:?}");
    }

    /// Sets a field's value by script (long texts, where typing key by key is slow).
    pub async fn set_value(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.exec(
            "arguments[0].value = arguments[1]",
            json!([{ELEMENT: e}, text]),
        )
        .await;
    }

    pub async fn text(&self, css: &str) -> String {
        let v = self
            .exec(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : null",
                json!([css]),
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Waits up to 20 s until the element `css` shows `needle`.
    pub async fn wait_text(&self, css: &str, needle: &str) -> String {
        self.wait_text_for(css, needle, 20).await
    }

    /// Waits up to `secs` seconds until the element `css` shows `needle`.
    pub async fn wait_text_for(&self, css: &str, needle: &str, secs: u64) -> String {
        let start = Instant::now();
        loop {
            let t = self.text(css).await;
            if t.contains(needle) {
                return t;
            }
            if start.elapsed() > Duration::from_secs(secs) {
                let page = self.text("body").await;
                panic!("{css:?} never showed {needle:?}; it shows {t:?}; the page: {page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn exec(&self, script: &str, args: Value) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The cookies of the current page, HttpOnly ones included (WebDriver sees them; the
    /// page's scripts do not).
    pub async fn cookies(&self) -> Vec<Value> {
        self.cmd(reqwest::Method::GET, "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn set_window(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Saves a PNG of the viewport as `<screenshot_dir>/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        use base64::Engine;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn quit(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}
