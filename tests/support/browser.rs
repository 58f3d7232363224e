//! A real headless Chromium (Debian's `chromium`) driven over CDP by chromiumoxide, with the
//! flags that work on our machines, a fresh profile per browser, and helpers that poll the
//! page with a deadline instead of sleeping.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::page::{Page, ScreenshotParams};
use futures::StreamExt;

/// How long a page may take to show what a test waits for.
pub const PAGE_DEADLINE: Duration = Duration::from_secs(30);

/// The Chromium binary: `$CHROMIUM`, else /usr/bin/chromium.
pub fn chromium_path() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    path.exists().then_some(path)
}

/// A running browser; closed (and its profile removed) on drop.
pub struct Chromium {
    pub browser: Browser,
    handler: tokio::task::JoinHandle<()>,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Launches Chromium, or returns `None` when it is not installed — which fails the test
    /// when `CI=true` (`.ci/run` installs it), so CI can never skip the browser tests.
    pub async fn launch() -> Option<Self> {
        let Some(path) = chromium_path() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "chromium is not installed (apt-get install -y chromium); CI must run the browser tests"
            );
            eprintln!("SKIPPED: chromium is not installed (apt-get install -y chromium)");
            return None;
        };
        let profile = tempfile::tempdir().unwrap();
        let config = BrowserConfig::builder()
            .chrome_executable(path)
            .no_sandbox()
            .user_data_dir(profile.path())
            .window_size(1280, 900)
            .args([
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .launch_timeout(Duration::from_secs(60))
            .request_timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let (browser, mut events) = Browser::launch(config).await.expect("launch chromium");
        let handler = tokio::spawn(async move { while events.next().await.is_some() {} });
        Some(Self {
            browser,
            handler,
            _profile: profile,
        })
    }

    /// Closes the browser and waits for it.
    pub async fn close(mut self) {
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.handler.abort();
    }
}

/// Polls the page's HTML until `pred` holds; returns it. Fails with the last HTML.
pub async fn until(page: &Page, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PAGE_DEADLINE;
    loop {
        let html = page.content().await.unwrap_or_default();
        if pred(&html) {
            return html;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the page to show {what}; it shows:\n{html}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `script` in the page (e.g. filling and submitting a form).
pub async fn run(page: &Page, script: &str) {
    page.evaluate(script).await.expect(script);
}

/// The directory screenshots go to: `target/panel-screenshots`.
pub fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/panel-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Saves a full-page PNG of the page as `<name>.png`; returns its path.
pub async fn screenshot(page: &Page, name: &str) -> PathBuf {
    let png = page
        .screenshot(ScreenshotParams::builder().full_page(true).build())
        .await
        .unwrap();
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    path
}

/// Fails unless the PNG at `path` shows something: several colours, and at least 1 % of its
/// pixels differ from the top-left one (the background).
pub fn assert_not_blank(path: &Path) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let px = info.color_type.samples();
    let pixels: Vec<&[u8]> = bytes.chunks(px).collect();
    let background = pixels[0];
    let different = pixels.iter().filter(|p| *p != &background).count();
    let colours: std::collections::HashSet<&[u8]> = pixels.iter().copied().take(200_000).collect();
    assert!(
        different * 100 >= pixels.len() && colours.len() > 3,
        "{} looks blank: {different} of {} pixels differ from the background, {} colours",
        path.display(),
        pixels.len(),
        colours.len()
    );
}
