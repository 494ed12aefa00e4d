//! Federation in the reconciler (issue 18): a node's config carries every
//! provider as a pool and every mapping lbd knows, a failover replacement
//! too; deleting the instance takes its mappings and token files.

use super::*;
use crate::model::federation::{ResourceKey, ResourceMapping};
use crate::model::mapping::{MappingSource, TokenMappingCreate};
use crate::store::federation_tokens::TokenStore;

fn volume(id: &str, provider: &str) -> ResourceMapping {
    ResourceMapping {
        key: ResourceKey {
            resource_type: "volumes".into(),
            id: id.into(),
        },
        provider: provider.into(),
    }
}

async fn federated_instance(h: &Harness, tokens: &TokenStore) -> InstanceId {
    let spec: InstanceCreate = serde_json::from_value(serde_json::json!({
        "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
        "backend": {"entities": ["127.0.0.1:9001"]},
        "federation": {"providers": {"sp1": {"entities": ["127.0.0.1:9101"]},
                                     "sp2": {"entities": ["127.0.0.1:9102"]}},
                       "resource_paths": ["/{project}/{type}/{id}"]}
    }))
    .unwrap();
    let spec = spec.validate(&crate::password::Argon2Hasher).unwrap();
    let tokens = tokens.clone();
    h.store
        .transaction(move |tx| {
            let p = store::insert_project(tx, "demo", "admin", "127.5.0.0/16")?;
            let id = store::insert_instance(tx, p.id, &spec)?.id;
            store::put_resource_mapping(tx, id, &volume("v1", "sp2"), MappingSource::Injected, 1)?;
            let t = TokenMappingCreate {
                local_token: "local".into(),
                local_project: "alice".into(),
                provider: "sp1".into(),
                remote_token: "remote-secret".into(),
                remote_project: "sp1-alice".into(),
                expires_at: None,
            };
            store::put_token_mapping(tx, &tokens, id, &t, 1)?;
            Ok::<_, StoreError>(id)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn nodes_start_with_the_providers_and_every_mapping_a_replacement_too() {
    let dir = std::env::temp_dir().join(format!("lbaas-reconcile-fed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tokens = TokenStore::open(&dir).unwrap();
    let t = tokens.clone();
    let h = harness_with(move |s| s.federation_tokens = Some(t));
    let id = federated_instance(&h, &tokens).await;
    h.reconciler.reconcile_once().await.unwrap();
    let config = h.host.configs.lock().unwrap().last().cloned().unwrap();
    assert!(config.policy.pools.contains_key("sp1") && config.policy.pools.contains_key("sp2"));
    let nf = config.federation.expect("the federation goes to the node");
    assert_eq!(nf.mappings.version, 2);
    assert_eq!(nf.mappings.resources, vec![volume("v1", "sp2")]);
    assert_eq!(nf.mappings.tokens[0].remote_token, "remote-secret");

    // A mapping learned meanwhile, then a failover: the replacement's first
    // config has both, before it serves.
    write(&h, move |c| {
        store::put_resource_mapping(c, id, &volume("v2", "sp1"), MappingSource::Learned, 2)?;
        Ok(())
    })
    .await;
    let old = node_rows(&h, id).await[0].clone();
    h.host.kill(old.id);
    mark(&h, old.id, NodeState::Failed, 0).await;
    let pushed = h.host.configs.lock().unwrap().len();
    h.reconciler.reconcile_once().await.unwrap();
    let configs = h.host.configs.lock().unwrap().clone();
    assert_eq!(configs.len(), pushed + 1, "the replacement got its config");
    let nf = configs.last().unwrap().federation.clone().unwrap();
    assert_eq!(nf.mappings.version, 3);
    assert_eq!(
        nf.mappings.resources,
        vec![volume("v1", "sp2"), volume("v2", "sp1")]
    );
    let new = node_rows(&h, id)
        .await
        .into_iter()
        .find(|n| n.id != old.id)
        .unwrap();
    assert_eq!(h.dns.a_records("web.demo").await, vec![ipv4(&new)]);

    // Deleting the instance takes its mappings and its token files.
    let token_dir = dir
        .join(crate::store::federation_tokens::FEDERATION_TOKENS_DIR)
        .join(id.0.to_string());
    assert!(token_dir.exists());
    write(&h, move |c| {
        store::set_instance_provisioning(c, id, ProvisioningStatus::PendingDelete, None)
    })
    .await;
    h.reconciler.reconcile_once().await.unwrap();
    assert!(instance_gone(&h, id).await);
    assert_eq!(
        h.store
            .read(move |c| store::count_mappings(c, id))
            .await
            .unwrap(),
        (0, 0)
    );
    assert!(
        !token_dir.exists(),
        "the token files went with the instance"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn instance_gone(h: &Harness, id: InstanceId) -> bool {
    h.store
        .read(move |c| store::instance_by_id(c, id))
        .await
        .unwrap()
        .is_none()
}
