//! `update instance`: the fields given replace the stored ones; the result
//! is validated as a whole, so nothing is half-changed.

use super::*;

/// `update instance`: every field but the names is optional; what is given replaces
/// what was stored, and the nodes apply it in place.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceUpdate {
    pub project: String,
    pub name: String,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    #[serde(default)]
    pub backend: Option<BackendSpec>,
    #[serde(default)]
    pub min_nodes: Option<i64>,
    #[serde(default)]
    pub max_nodes: Option<i64>,
    #[serde(default)]
    pub standby_nodes: Option<i64>,
    /// Given fields replace the stored ones; absent ones stay.
    #[serde(default)]
    pub scaling: Option<ScalingSpec>,
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    /// Given fields replace the stored ones; absent ones stay.
    #[serde(default)]
    pub timeouts: Option<TimeoutsSpec>,
    #[serde(default)]
    pub max_connections: Option<i64>,
    #[serde(default)]
    pub max_header_bytes: Option<i64>,
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Replaces the stored one; pools that name their own keep theirs.
    #[serde(default)]
    pub backend_protocol: Option<BackendProtocol>,
    /// Replaces all named pools (`{}`: none left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<BTreeMap<String, PoolSpec>>,
    /// Replaces all rules (`[]`: none left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleSpec>>,
    /// Replaces the instance auth; `"none"` removes it. A user or key
    /// given without its secret keeps the stored one of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RuleAuthSpec>,
    /// Replaces all rate limits (`[]`: none left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<RateLimitSpec>>,
    /// smtp only: given fields replace the stored ones; absent ones stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<crate::model::smtp::SmtpSpec>,
    /// Replaces the stored `tls`; a certificate given as `{"fingerprint"}`
    /// keeps the stored one (and its key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::model::tls::TlsSpec>,
    /// Replaces the stored `federation`; `"none"` removes it. Absent keeps
    /// it (checked again against the pools and port the update ends with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<FederationUpdate>,
}

impl InstanceUpdate {
    /// Whether the update touches the L7 policy.
    pub fn has_policy(&self) -> bool {
        self.pools.is_some()
            || self.rules.is_some()
            || self.auth.is_some()
            || self.rate_limits.is_some()
    }

    /// The passwords and keys this update carries.
    pub fn secrets(&self) -> Vec<&str> {
        let rules = self.rules.iter().flatten();
        let own = rules.filter_map(|r| r.auth.as_ref().and_then(RuleAuthSpec::own));
        let auth = self.auth.as_ref().and_then(RuleAuthSpec::own);
        auth.into_iter()
            .chain(own)
            .flat_map(AuthSpec::secrets)
            .collect()
    }

    /// The stored policy with the given fields replaced, as a spec.
    fn merged_policy(&self, current: &crate::model::policy::Policy) -> PolicySpec {
        let mut spec = current.to_spec();
        if let Some(p) = &self.pools {
            spec.pools = Some(p.clone());
        }
        if let Some(r) = &self.rules {
            spec.rules = Some(r.clone());
        }
        if let Some(a) = &self.auth {
            spec.auth = a.own().cloned();
        }
        if let Some(l) = &self.rate_limits {
            spec.rate_limits = Some(l.clone());
        }
        spec
    }

    /// The spec after this update, validated as a whole (the policy too:
    /// rules against the pools and the auth they end up with).
    pub fn apply_to(
        &self,
        current: &InstanceSpec,
        hasher: &dyn SecretHasher,
    ) -> Result<InstanceSpec, ValidationError> {
        validate_name(&self.name)?;
        validate_name(&self.project)?;
        let mut next = current.clone();
        let backend_traffic = next.traffic_type.backend_protocol();
        if let Some(p) = self.port {
            next.port = port(p)?;
        }
        if let Some(a) = self.algorithm {
            next.tuning.algorithm = a;
        }
        if let Some(n) = self.min_nodes {
            next.min_nodes = node_count("min_nodes", Some(n))?;
        }
        if let Some(n) = self.max_nodes {
            next.max_nodes = node_count("max_nodes", Some(n))?;
        }
        if let Some(n) = self.standby_nodes {
            next.standby_nodes = standby_count(n)?;
        }
        if let Some(sc) = &self.scaling {
            next.scaling = sc.resolve(next.scaling)?;
        }
        let tuning = &mut next.tuning;
        if let Some(h) = &self.hash_on {
            tuning.hash_on = h.clone();
        }
        if let Some(t) = &self.timeouts {
            tuning.timeouts = t.resolve(tuning.timeouts)?;
        }
        tuning.max_connections = max_connections(self.max_connections, tuning.max_connections)?;
        tuning.max_header_bytes = max_header_bytes(self.max_header_bytes, tuning.max_header_bytes)?;
        if let Some(p) = self.proxy_protocol {
            tuning.proxy_protocol = p;
        }
        if let Some(p) = self.backend_protocol {
            tuning.backend_protocol = p;
        }
        if let Some(backend) = &self.backend {
            // An update that names no entities keeps the current ones.
            if !backend.entities.is_empty() {
                (next.backends, next.named_backends) =
                    entity_members(&backend.entities, next.port, backend_traffic)?;
            }
            if let Some(hc) = &backend.health_check {
                next.health_check = health_check(Some(hc), backend_traffic)?;
            }
            if let Some(a) = backend.auto_scaling {
                next.auto_scaling = a;
            }
            if backend.managed.is_some() {
                // Managed without entities: the pool's members are lbd's now.
                if backend.entities.is_empty() {
                    next.backends.clear();
                    next.named_backends.clear();
                }
                next.managed = default_managed(
                    backend.managed.as_ref(),
                    next.backends.len() + next.named_backends.len(),
                    next.traffic_type,
                )?;
            } else if !backend.entities.is_empty() {
                next.managed = None;
            }
            if backend.sticky.is_some() {
                next.sticky = sticky(backend.sticky.as_ref(), next.traffic_type)?;
            }
            if backend.backend_protocol.is_some() {
                next.default_pool_protocol = backend.backend_protocol;
            }
            if let Some(tls) = &backend.backend_tls {
                next.default_pool_tls = tls
                    .validate("backend.backend_tls")
                    .map_err(ValidationError::BackendTls)?;
            }
        }
        // Revalidated even when untouched: pools carry the listener port
        // as their members' default.
        if self.has_policy() || self.port.is_some() {
            next.policy = self.merged_policy(&current.policy).validate_keeping(
                backend_traffic,
                next.port,
                hasher,
                &current.policy,
            )?;
        }
        next.smtp = crate::model::smtp::for_instance(
            next.traffic_type,
            self.smtp.as_ref(),
            current.smtp.as_ref(),
            &next.policy,
            next.managed.is_some(),
        )?;
        if let Some(tls) = &self.tls {
            let now = crate::model::tls::unix_now();
            next.tls = Some(tls.validate(current.tls.as_ref(), now)?);
        }
        // Validated again even when untouched: a new pool may take a
        // provider's name.
        let federation = match &self.federation {
            Some(FederationUpdate::Off(NoFederation::None)) => None,
            Some(FederationUpdate::On(spec)) => Some((**spec).clone()),
            None => current.federation.as_ref().map(federation_spec),
        };
        next.federation = federation
            .as_ref()
            .map(|f| {
                super::federation::validate_federation(
                    f,
                    next.traffic_type,
                    next.port,
                    &next.policy,
                )
            })
            .transpose()?;
        next.check_combination()?;
        Ok(next)
    }
}
