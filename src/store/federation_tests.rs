//! The federation mappings against a real SQLite file and real token files.

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::store::{insert_instance, insert_project, Store};

struct TempState {
    dir: std::path::PathBuf,
}

impl TempState {
    fn new(name: &str) -> TempState {
        // A name no other test of this process uses (the token store's own
        // test has a directory of its own too).
        let dir =
            std::env::temp_dir().join(format!("lbaas-fed-mappings-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempState { dir }
    }
}

impl Drop for TempState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spec() -> crate::model::InstanceSpec {
    let create: crate::model::InstanceCreate = serde_json::from_value(serde_json::json!({
        "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
        "backend": {"entities": ["127.0.0.1:8000"]},
        "federation": {"providers": {"sp1": {"entities": ["127.0.0.1:9001"]},
                                     "sp2": {"entities": ["127.0.0.1:9002"]}},
                       "resource_paths": ["/{project}/{type}/{id}"]}
    }))
    .unwrap();
    create.validate(&crate::password::Argon2Hasher).unwrap()
}

fn setup(state: &TempState) -> (Store, TokenStore, InstanceId) {
    let store = Store::open(&state.dir.join("lbaas.db")).unwrap();
    let tokens = TokenStore::open(&state.dir).unwrap();
    let id = store
        .transaction_blocking(|tx| {
            let p = insert_project(tx, "demo", "john", "127.1.0.0/16")?;
            Ok::<_, StoreError>(insert_instance(tx, p.id, &spec())?.id)
        })
        .unwrap();
    (store, tokens, id)
}

fn mapping(t: &str, id: &str, provider: &str) -> ResourceMapping {
    ResourceMapping {
        key: ResourceKey {
            resource_type: t.into(),
            id: id.into(),
        },
        provider: provider.into(),
    }
}

fn token(local: &str, provider: &str, remote: &str, expires_at: Option<u64>) -> TokenMappingCreate {
    TokenMappingCreate {
        local_token: local.into(),
        local_project: "alice".into(),
        provider: provider.into(),
        remote_token: remote.into(),
        remote_project: format!("{provider}-alice"),
        expires_at,
    }
}

#[test]
fn the_version_grows_only_with_a_change() {
    let state = TempState::new("version");
    let (store, _, id) = setup(&state);
    let put = |m: &ResourceMapping, source| {
        store
            .transaction_blocking(|tx| put_resource_mapping(tx, id, m, source, 100))
            .unwrap()
    };
    let version = || store.read_blocking(|c| mappings_version(c, id)).unwrap();
    assert_eq!(version(), 0);
    let v1 = mapping("volumes", "v1", "sp2");
    let w = put(&v1, MappingSource::Learned);
    assert_eq!((w.version, w.changed), (1, true));
    // Learned again with the same provider (every node may report it).
    let w = put(&v1, MappingSource::Learned);
    assert_eq!((w.version, w.changed), (1, false));
    // Injected with the same provider: the source changes, not the version.
    let w = put(&v1, MappingSource::Injected);
    assert_eq!((w.version, w.changed), (1, false));
    let view = store
        .read_blocking(|c| resource_mapping(c, id, &v1.key))
        .unwrap()
        .unwrap();
    assert_eq!(view.source, MappingSource::Injected);
    assert_eq!(view.updated_at, "1970-01-01T00:01:40Z");
    // A learned mapping does not override an injected one.
    let w = put(&mapping("volumes", "v1", "sp1"), MappingSource::Learned);
    assert_eq!((w.version, w.changed), (1, false));
    // An injected one does.
    let w = put(&mapping("volumes", "v1", "sp1"), MappingSource::Injected);
    assert_eq!((w.version, w.changed), (2, true));
    let w = put(&mapping("volumes", "v2", "sp1"), MappingSource::Learned);
    assert_eq!(w.version, 3);
    let w = put(&mapping("volumes", "v2", "sp2"), MappingSource::Learned);
    assert_eq!((w.version, w.changed), (4, true), "learned over learned");
    let gone = store
        .transaction_blocking(|tx| delete_resource_mapping(tx, id, &v1.key))
        .unwrap()
        .unwrap();
    assert_eq!((gone.0.provider.as_str(), gone.1.version), ("sp1", 5));
    let again = store
        .transaction_blocking(|tx| delete_resource_mapping(tx, id, &v1.key))
        .unwrap();
    assert!(again.is_none());
    assert_eq!(version(), 5, "deleting nothing changes nothing");
    let nm = store
        .read_blocking(|c| node_mappings(c, None, id, 100))
        .unwrap();
    assert_eq!(nm.version, 5);
    assert_eq!(nm.resources, vec![mapping("volumes", "v2", "sp2")]);
}

#[test]
fn remote_tokens_stay_out_of_sqlite_and_local_tokens_are_hashed() {
    let state = TempState::new("tokens");
    let (store, tokens, id) = setup(&state);
    let put = |t: &TokenMappingCreate| {
        let tokens = tokens.clone();
        store
            .transaction_blocking(|tx| put_token_mapping(tx, &tokens, id, t, 100))
            .unwrap()
    };
    let first = put(&token("local-tok-one", "sp1", "REMOTE-SECRET-one", None));
    assert_eq!((first.write.version, first.write.changed), (1, true));
    assert_eq!(first.replaced_secret, None);
    let sha = token_sha256_hex("local-tok-one");
    assert_eq!(first.view.local_token_sha256_prefix, sha[..12]);
    // The same again changes nothing; a new remote token replaces the file.
    let same = put(&token("local-tok-one", "sp1", "REMOTE-SECRET-one", None));
    assert_eq!((same.write.version, same.write.changed), (1, false));
    let changed = put(&token("local-tok-one", "sp1", "REMOTE-SECRET-two", None));
    assert_eq!(changed.write.version, 2);
    let old = changed.replaced_secret.clone().unwrap();
    tokens.remove(id, &old).unwrap();
    put(&token(
        "local-tok-old",
        "sp2",
        "REMOTE-SECRET-old",
        Some(50),
    ));

    let nm = store
        .read_blocking(|c| node_mappings(c, Some(&tokens), id, 100))
        .unwrap();
    assert_eq!(nm.tokens.len(), 1, "the expired one is left out");
    let t = &nm.tokens[0];
    assert_eq!(t.local_token_sha256, sha);
    assert_eq!(t.remote_token, "REMOTE-SECRET-two");
    assert_eq!(t.remote_project, "sp1-alice");
    let (_, _, views) = store
        .read_blocking(|c| mappings_info(c, id, None, 100))
        .unwrap();
    assert_eq!(views.len(), 1);

    // The token file: 0600, and the only place the remote token is.
    let ids = store.read_blocking(all_token_secret_ids).unwrap();
    let secret = ids[&id].iter().find(|s| **s != old).cloned();
    let path = state
        .dir
        .join(crate::store::federation_tokens::FEDERATION_TOKENS_DIR)
        .join(id.0.to_string());
    let mut checked = 0;
    for f in std::fs::read_dir(&path).unwrap().flatten() {
        let mode = f.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?}", f.path());
        checked += 1;
    }
    assert_eq!(checked, 2);
    assert!(secret.is_some());
    // The database and its WAL: the hash is there (so the search sees the
    // rows), the tokens are not.
    let mut hash_seen = false;
    for suffix in ["", "-wal"] {
        let file = state.dir.join(format!("lbaas.db{suffix}"));
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        let has = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
        hash_seen |= has(&sha);
        for needle in ["REMOTE-SECRET", "local-tok-one", "local-tok-old"] {
            assert!(!has(needle), "{needle} found in {}", file.display());
        }
    }
    assert!(hash_seen, "the local token's hash is stored");

    let r = TokenMappingRef {
        local_token: "local-tok-one".into(),
        local_project: "alice".into(),
        provider: "sp1".into(),
    };
    let (view, secret, w) = store
        .transaction_blocking(|tx| delete_token_mapping(tx, id, &r))
        .unwrap()
        .unwrap();
    assert_eq!((view.provider.as_str(), w.version), ("sp1", 4));
    assert!(
        tokens.get(id, &secret).is_ok(),
        "the caller removes it after the commit"
    );
    assert!(store
        .transaction_blocking(|tx| delete_token_mapping(tx, id, &r))
        .unwrap()
        .is_none());

    // Expired rows are pruned without a version change.
    assert!(store.read_blocking(|c| has_expired_tokens(c, 100)).unwrap());
    let pruned = store
        .transaction_blocking(|tx| prune_expired_tokens(tx, 100))
        .unwrap();
    assert_eq!(pruned, 1);
    assert_eq!(store.read_blocking(|c| mappings_version(c, id)).unwrap(), 4);
}

#[test]
fn removed_providers_and_deleted_instances_take_their_mappings() {
    let state = TempState::new("retain");
    let (store, tokens, id) = setup(&state);
    let tk = tokens.clone();
    store
        .transaction_blocking(|tx| {
            put_resource_mapping(
                tx,
                id,
                &mapping("volumes", "a", "sp1"),
                MappingSource::Learned,
                1,
            )?;
            put_resource_mapping(
                tx,
                id,
                &mapping("volumes", "b", "sp2"),
                MappingSource::Injected,
                1,
            )?;
            put_token_mapping(tx, &tk, id, &token("l", "sp2", "r", None), 1)?;
            Ok::<_, StoreError>(())
        })
        .unwrap();
    assert_eq!(
        store.read_blocking(|c| count_mappings(c, id)).unwrap(),
        (2, 1)
    );
    let changed = store
        .transaction_blocking(|tx| retain_providers(tx, id, &["sp1", "sp2"]))
        .unwrap();
    assert!(!changed);
    let changed = store
        .transaction_blocking(|tx| retain_providers(tx, id, &["sp1"]))
        .unwrap();
    assert!(changed);
    assert_eq!(
        store.read_blocking(|c| count_mappings(c, id)).unwrap(),
        (1, 0)
    );
    assert_eq!(store.read_blocking(|c| mappings_version(c, id)).unwrap(), 4);
    store
        .transaction_blocking(|tx| crate::store::delete_instance(tx, id))
        .unwrap();
    assert_eq!(
        store.read_blocking(|c| count_mappings(c, id)).unwrap(),
        (0, 0)
    );
    tokens.remove_instance(id).unwrap();
    let dir = state
        .dir
        .join(crate::store::federation_tokens::FEDERATION_TOKENS_DIR)
        .join(id.0.to_string());
    assert!(!dir.exists());
}
