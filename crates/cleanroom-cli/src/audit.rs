//! `cleanroom audit list|verify`: the chain is downloaded whole and every link checked on this
//! machine, against the head the server reports with it and against the head this machine
//! verified last time (kept per server and chain in the user's configuration directory), so a
//! server that cuts, rewrites or extends a history behind its head is caught.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cleanroom_core::audit::{ChainHead, verify_chain};
use cleanroom_server::wire::{AuditEntryOut, AuditPage, HeadOut};

use crate::AuditCmd;
use crate::client::{Client, seg};
use crate::files::AtomicFile;
use crate::output;

/// Downloads a whole chain page by page. Each page comes with the chain's head read in the
/// same snapshot; the head returned is the one of the last (empty) page, so every entry
/// returned must be at or below it.
pub async fn fetch_chain(
    cl: &Client,
    chain: &str,
) -> Result<(String, Vec<AuditEntryOut>, Option<HeadOut>)> {
    let mut after = 0;
    let mut all = Vec::new();
    let mut name = None;
    loop {
        let page: AuditPage = cl
            .get(&format!("/audit/{}?after={after}&limit=5000", seg(chain)?))
            .await?;
        if name.is_none() {
            name = Some(page.chain.clone());
        }
        let Some(last) = page.entries.last() else {
            return Ok((name.unwrap_or_else(|| chain.to_owned()), all, page.head));
        };
        if last.seq <= after {
            bail!(
                "the server returned audit entries out of order (entry {} after {after})",
                last.seq
            );
        }
        after = last.seq;
        all.extend(page.entries);
    }
}

/// Parses a pinned head `SEQ:HASH` (64 hex digits).
pub fn parse_pin(pin: &str) -> Result<ChainHead> {
    let usage =
        || format!("--expect-head takes SEQ:HASH (a number, a colon, 64 hex digits), not {pin:?}");
    let (seq, hash) = pin.split_once(':').with_context(usage)?;
    let seq: u64 = seq.trim().parse().ok().with_context(usage)?;
    let bytes = hex::decode(hash.trim()).ok().with_context(usage)?;
    let hash: [u8; 32] = bytes.try_into().ok().with_context(usage)?;
    Ok(ChainHead { seq, hash })
}

/// Verifies a downloaded chain: every entry the server returned, from the first, must link up
/// to exactly the head it reported (an entry past the head, or entries without a head, fail),
/// and every pinned head must be an entry of it.
pub fn verify_downloaded(
    chain: &str,
    entries: &[AuditEntryOut],
    head: Option<&HeadOut>,
    pins: &[(ChainHead, String)],
) -> Result<ChainHead> {
    let head = head
        .map(HeadOut::to_head)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if head.is_none() && !entries.is_empty() {
        bail!(
            "audit chain {chain} is broken: the server returned {} entries but no head record \
             (the head was removed, or the entries were written outside the server)",
            entries.len()
        );
    }
    let parsed = entries
        .iter()
        .map(|e| e.to_entry())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let verified = verify_chain(chain, &parsed, head)?;
    for (pin, what) in pins {
        let Some(e) = parsed.iter().find(|e| e.seq == pin.seq) else {
            bail!(
                "audit chain {chain}: {what} is entry {}, but the chain now ends at entry {}: history was cut",
                pin.seq,
                verified.seq
            );
        };
        if e.hash != pin.hash {
            bail!(
                "audit chain {chain}: entry {} differs from {what}: history was rewritten",
                pin.seq
            );
        }
    }
    Ok(verified)
}

/// The heads this machine verified, per server and chain:
/// `<config dir>/audit-heads.json`, where the configuration directory is
/// `CLEANROOM_CONFIG_DIR`, else `$XDG_CONFIG_HOME/cleanroom`, else `~/.config/cleanroom`.
struct Pins {
    path: Option<PathBuf>,
    map: BTreeMap<String, BTreeMap<String, String>>,
}

fn config_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CLEANROOM_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("cleanroom"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".config").join("cleanroom"))
}

impl Pins {
    fn load() -> Result<Pins> {
        let path = config_dir().map(|d| d.join("audit-heads.json"));
        let map = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading the verified heads in {}", p.display()))?;
                serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{} is not a file of verified audit heads (remove it to start afresh)",
                        p.display()
                    )
                })?
            }
            _ => BTreeMap::new(),
        };
        Ok(Pins { path, map })
    }

    fn get(&self, server: &str, chain: &str) -> Option<&String> {
        self.map.get(server).and_then(|m| m.get(chain))
    }

    /// Records `head` as verified, atomically (temporary file, fsync, rename).
    fn remember(&mut self, server: &str, chain: &str, head: ChainHead) -> Result<()> {
        let Some(path) = self.path.clone() else {
            bail!("no configuration directory (set CLEANROOM_CONFIG_DIR or HOME)");
        };
        self.map.entry(server.to_owned()).or_default().insert(
            chain.to_owned(),
            format!("{}:{}", head.seq, hex::encode(head.hash)),
        );
        let dir = path.parent().context("configuration path")?;
        std::fs::create_dir_all(dir)?;
        let mut file = AtomicFile::beside(&path)?;
        serde_json::to_writer_pretty(file.file(), &self.map)?;
        file.commit(true)
    }
}

pub async fn run(cl: &Client, json: bool, c: AuditCmd) -> Result<()> {
    match c {
        AuditCmd::List {
            chain,
            after,
            limit,
        } => {
            let r: AuditPage = cl
                .get(&format!(
                    "/audit/{}?after={after}&limit={limit}",
                    seg(&chain)?
                ))
                .await?;
            if json {
                return output::json(&r);
            }
            println!("{}", output::audit(&r.entries));
        }
        AuditCmd::Verify { chain, expect_head } => {
            let expected = expect_head.as_deref().map(parse_pin).transpose()?;
            let mut pins = Pins::load()?;
            let (name, entries, head) = fetch_chain(cl, &chain).await?;
            let mut checks = Vec::new();
            if let Some(p) = expected {
                checks.push((p, "the head given with --expect-head".to_owned()));
            }
            let remembered = pins.get(cl.base(), &name).cloned();
            if let Some(text) = &remembered {
                let p = parse_pin(text).with_context(|| {
                    format!("a verified head of {name} kept on this machine is malformed")
                })?;
                checks.push((p, format!("the head this machine verified last ({text})")));
            }
            let h = verify_downloaded(&name, &entries, head.as_ref(), &checks).map_err(|e| {
                if remembered.is_some() {
                    e.context(format!(
                        "the server presents a history of {name} that does not extend the one verified \
                         on this machine before (if you trust a new server at the same address, remove \
                         its entry from the verified heads file)"
                    ))
                } else {
                    e
                }
            })?;
            let pinned = format!("{}:{}", h.seq, hex::encode(h.hash));
            let kept = match pins.remember(cl.base(), &name, h) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!(
                        "warning: could not remember the verified head on this machine: {e:#}"
                    );
                    false
                }
            };
            if json {
                return output::json(&serde_json::json!({
                    "chain": name, "verified_entries": h.seq, "head": pinned,
                    "extends_previous": remembered, "remembered": kept,
                }));
            }
            println!("audit chain {name}: {} entries verified, intact.", h.seq);
            if let Some(prev) = remembered {
                println!("it extends the history this machine verified before (head {prev}).");
            }
            println!(
                "head {pinned} (remembered on this machine; pin it elsewhere with --expect-head)"
            );
        }
    }
    Ok(())
}
