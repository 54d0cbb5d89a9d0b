//! The scene every untrusted-source test starts from: a real source registry
//! seeded with `app:v1` (and `victim/app:prod` at the target, the thing an
//! escape would overwrite), a hostile registry in front of the source, a
//! real target registry, and `regkeeper` runs measured.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use crate::support::*;

pub struct Scene {
    pub src: Registry,
    pub dst: Registry,
    pub hostile: HostileRegistry,
    pub dir: tempfile::TempDir,
    /// `app:v1` at the source.
    pub image: Image,
    /// `victim/app:prod` at the target before any run (and `victim/app:old`
    /// is `image`, so its blobs are there).
    pub victim: Image,
}

impl Scene {
    /// The scene, with `handler` answering at the hostile registry (use
    /// `Reply::Forward` for whatever it should pass through).
    pub fn new(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Scene {
        let src = Registry::start_plain();
        let dst = Registry::start_plain();
        let mut corpus = Corpus::new();
        let image = corpus.image(
            "v1",
            &ImageSpec::new(&[layer("untrusted-base", 4000), layer("untrusted-v1", 2000)])
                .label("name", "v1"),
        );
        corpus.push(&src, "v1", "app", "v1");
        let victim = corpus.image(
            "victim",
            &ImageSpec::new(&[layer("victim", 3000)]).label("name", "victim"),
        );
        corpus.push(&dst, "victim", "victim/app", "prod");
        // v1's blobs are in victim/app too, so a manifest PUT that escaped
        // into it would succeed: the escape tests can fail for real
        corpus.push(&dst, "v1", "victim/app", "old");
        let hostile = HostileRegistry::start(Some(&src.url()), handler);
        Scene {
            src,
            dst,
            hostile,
            dir: tempfile::tempdir().unwrap(),
            image,
            victim,
        }
    }

    /// A config with the hostile source's and the target's sections (plus
    /// `src_extra` lines for the source), and `rules`.
    pub fn config(&self, src_extra: &str, rules: &str) -> PathBuf {
        let text = format!(
            "version = 1\n[daemon]\nstate_dir = {:?}\nlisten = \"\"\n{}\
             [registries.\"{}\"]\nplain_http = true\n\n{rules}\n",
            self.dir.path().join("state").display().to_string(),
            self.hostile.registry_toml(src_extra),
            self.dst.host(),
        );
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// One rule from `source` (a repository path at the hostile registry,
    /// `app` or `team/*`) to `target` (a full reference).
    pub fn rule(&self, source: &str, target: &str) -> String {
        format!(
            "[[rule]]\nname = \"r\"\nsource = \"{}/{source}\"\ntargets = [\"{target}\"]\n",
            self.hostile.host()
        )
    }

    /// `regkeeper ARGS -c CONFIG`, measured, killed after `deadline`.
    pub fn run(&self, config: &Path, args: &[&str], deadline: Duration) -> Measured {
        let m = run_measured(
            Command::new(regkeeper_bin())
                .args(args)
                .arg("-c")
                .arg(config)
                .env("REGKEEPER_LOG", "info"),
            deadline,
        );
        eprintln!(
            "regkeeper {args:?} -> {:?} in {:?}, peak {:.1} MiB\n--- stdout\n{}--- stderr\n{}",
            m.code,
            m.wall,
            m.peak_rss_mib(),
            m.stdout,
            m.stderr
        );
        m
    }

    /// The target's `victim/app:prod` still points at the victim image.
    pub fn assert_victim_untouched(&self) {
        assert_eq!(
            self.dst.digest_of("victim/app", "prod"),
            self.victim.digest,
            "the target's victim/app:prod was re-pointed"
        );
        assert_eq!(
            self.dst.list_tags("victim/app"),
            vec!["old".to_string(), "prod".to_string()],
            "tags were added to victim/app"
        );
    }

    /// The target's repositories (its catalog), sorted.
    pub fn target_repositories(&self) -> Vec<String> {
        let r = self.dst.get("/v2/_catalog?n=1000").expect("catalog");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("catalog json");
        let mut out: Vec<String> = v["repositories"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

/// A tag list page naming `tags` for repository `name`.
pub fn tag_page(name: &str, tags: &[&str]) -> Reply {
    Reply::Respond(Canned::json(
        200,
        &serde_json::json!({ "name": name, "tags": tags }),
    ))
}

/// One line of figures for the closing note.
pub fn figures(attack: &str, m: &Measured, requests: usize, extra: &str) {
    eprintln!(
        "UNTRUSTED {attack}: exit {:?}, {:.2} s, peak {:.1} MiB, {requests} requests{}{extra}",
        m.code,
        m.wall.as_secs_f64(),
        m.peak_rss_mib(),
        if extra.is_empty() { "" } else { ", " },
    );
}
