//! Autoscaling: the policy an instance carries and the decision the health
//! checker takes from its load samples. Pure logic, so every rule is tested
//! without a node or a clock.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::ValidationError;

/// The `scaling` object as a client may write it; absent fields keep their
/// current (or default) value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScalingSpec {
    /// Requests per second one node should carry; 0 leaves requests out.
    #[serde(default)]
    pub target_requests_per_s: Option<i64>,
    /// Active connections one node should carry; 0 leaves connections out.
    #[serde(default)]
    pub target_connections: Option<i64>,
    /// Consecutive samples over the target before a node is added.
    #[serde(default)]
    pub scale_out_after: Option<i64>,
    /// Consecutive samples under the low-water mark before a node is removed.
    #[serde(default)]
    pub scale_in_after: Option<i64>,
    /// Percent of the target: a node is removed when the load, spread over
    /// one node fewer, stays under this.
    #[serde(default)]
    pub low_water_percent: Option<i64>,
    /// Seconds after a scaling action before the next one.
    #[serde(default)]
    pub cooldown: Option<i64>,
}

/// A resolved scaling policy (stored with the instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ScalingPolicy {
    pub target_requests_per_s: u32,
    pub target_connections: u32,
    pub scale_out_after: u32,
    pub scale_in_after: u32,
    pub low_water_percent: u32,
    pub cooldown: u32,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        ScalingPolicy {
            target_requests_per_s: 1000,
            target_connections: 1000,
            scale_out_after: 3,
            scale_in_after: 12,
            low_water_percent: 50,
            cooldown: 60,
        }
    }
}

impl ScalingSpec {
    /// Fills absent fields from `base` and checks ranges.
    pub fn resolve(&self, base: ScalingPolicy) -> Result<ScalingPolicy, ValidationError> {
        let pick = |name: &str, v: Option<i64>, d: u32, min: i64, max: i64| match v {
            None => Ok(d),
            Some(v) if (min..=max).contains(&v) => Ok(v as u32),
            Some(v) => Err(ValidationError::InvalidScaling(format!(
                "scaling.{name} must be {min} to {max}, got {v}"
            ))),
        };
        let policy = ScalingPolicy {
            target_requests_per_s: pick(
                "target_requests_per_s",
                self.target_requests_per_s,
                base.target_requests_per_s,
                0,
                10_000_000,
            )?,
            target_connections: pick(
                "target_connections",
                self.target_connections,
                base.target_connections,
                0,
                10_000_000,
            )?,
            scale_out_after: pick(
                "scale_out_after",
                self.scale_out_after,
                base.scale_out_after,
                1,
                1000,
            )?,
            scale_in_after: pick(
                "scale_in_after",
                self.scale_in_after,
                base.scale_in_after,
                1,
                1000,
            )?,
            low_water_percent: pick(
                "low_water_percent",
                self.low_water_percent,
                base.low_water_percent,
                1,
                99,
            )?,
            cooldown: pick("cooldown", self.cooldown, base.cooldown, 0, 86_400)?,
        };
        if policy.target_requests_per_s == 0 && policy.target_connections == 0 {
            return Err(ValidationError::InvalidScaling(
                "scaling needs target_requests_per_s or target_connections above 0".into(),
            ));
        }
        Ok(policy)
    }
}

/// The load of an instance's serving nodes at one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub nodes: u32,
    pub requests_per_s: f64,
    pub active_connections: f64,
}

/// Memory of the consecutive samples above and below the marks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScalingWindow {
    pub over: u32,
    pub under: u32,
}

/// What to do, and the numbers that caused it (the event's message).
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleDecision {
    Out { to: u32, reason: String },
    In { to: u32, reason: String },
}

/// Limits a decision must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleBounds {
    pub min_nodes: u32,
    pub max_nodes: u32,
    /// The node count the instance asks for now.
    pub desired: u32,
    /// Whether the cooldown since the last action has passed.
    pub cooled_down: bool,
}

impl ScalingPolicy {
    /// Load per node as a share of the target, over `nodes` nodes: the larger
    /// of the requests and the connections shares (those with a target).
    fn utilisation(&self, load: &Load, nodes: u32) -> f64 {
        let nodes = f64::from(nodes.max(1));
        let mut u: f64 = 0.0;
        if self.target_requests_per_s > 0 {
            u = u.max(load.requests_per_s / nodes / f64::from(self.target_requests_per_s));
        }
        if self.target_connections > 0 {
            u = u.max(load.active_connections / nodes / f64::from(self.target_connections));
        }
        u
    }

    /// Feeds one sample into `window` and decides. Scale-out needs
    /// `scale_out_after` samples over the target; scale-in needs
    /// `scale_in_after` samples in which one node fewer would stay under the
    /// low-water mark. Neither happens during the cooldown or past min/max;
    /// an action resets the window.
    pub fn decide(
        &self,
        window: &mut ScalingWindow,
        load: &Load,
        bounds: ScaleBounds,
    ) -> Option<ScaleDecision> {
        let now = self.utilisation(load, load.nodes);
        let one_fewer = if load.nodes > 1 {
            self.utilisation(load, load.nodes - 1)
        } else {
            f64::INFINITY
        };
        let low_water = f64::from(self.low_water_percent) / 100.0;
        if now > 1.0 {
            window.over += 1;
            window.under = 0;
        } else if one_fewer < low_water {
            window.under += 1;
            window.over = 0;
        } else {
            *window = ScalingWindow::default();
        }
        if !bounds.cooled_down {
            return None;
        }
        let numbers = format!(
            "{:.1} req/s and {:.0} active connections over {} node(s), {:.0}% of the target per node \
             ({} req/s, {} connections)",
            load.requests_per_s,
            load.active_connections,
            load.nodes,
            now * 100.0,
            self.target_requests_per_s,
            self.target_connections,
        );
        if window.over >= self.scale_out_after && bounds.desired < bounds.max_nodes {
            let n = window.over;
            *window = ScalingWindow::default();
            return Some(ScaleDecision::Out {
                to: bounds.desired + 1,
                reason: format!("{numbers} for {n} samples: above target"),
            });
        }
        if window.under >= self.scale_in_after && bounds.desired > bounds.min_nodes {
            let n = window.under;
            *window = ScalingWindow::default();
            return Some(ScaleDecision::In {
                to: bounds.desired - 1,
                reason: format!(
                    "{numbers} for {n} samples: one node fewer would carry {:.0}% (low-water {}%)",
                    one_fewer * 100.0,
                    self.low_water_percent
                ),
            });
        }
        None
    }
}

/// The failover circuit breaker: with more than `max_share` of all nodes
/// failing at once, something larger than one node is wrong (the host, the
/// network, the controller's own view), and replacing them would only add
/// load. One failing node alone never trips it.
pub fn failover_paused(failing: usize, total: usize, max_share: f64) -> bool {
    failing as f64 > (max_share * total as f64).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalingPolicy {
        ScalingPolicy {
            target_requests_per_s: 100,
            target_connections: 0,
            scale_out_after: 2,
            scale_in_after: 3,
            low_water_percent: 50,
            cooldown: 10,
        }
    }

    fn bounds(desired: u32, cooled_down: bool) -> ScaleBounds {
        ScaleBounds {
            min_nodes: 1,
            max_nodes: 3,
            desired,
            cooled_down,
        }
    }

    fn load(nodes: u32, rps: f64) -> Load {
        Load {
            nodes,
            requests_per_s: rps,
            active_connections: 0.0,
        }
    }

    #[test]
    fn scales_out_after_consecutive_samples_over_target() {
        let p = policy();
        let mut w = ScalingWindow::default();
        assert_eq!(p.decide(&mut w, &load(1, 150.0), bounds(1, true)), None);
        // A dip resets the count.
        assert_eq!(p.decide(&mut w, &load(1, 90.0), bounds(1, true)), None);
        assert_eq!(p.decide(&mut w, &load(1, 150.0), bounds(1, true)), None);
        match p.decide(&mut w, &load(1, 150.0), bounds(1, true)) {
            Some(ScaleDecision::Out { to, reason }) => {
                assert_eq!(to, 2);
                assert!(reason.contains("150.0 req/s"), "{reason}");
                assert!(reason.contains("150%"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(w, ScalingWindow::default(), "an action resets the window");
    }

    #[test]
    fn never_past_max_nor_during_cooldown() {
        let p = policy();
        let mut w = ScalingWindow::default();
        for _ in 0..5 {
            assert_eq!(p.decide(&mut w, &load(3, 900.0), bounds(3, true)), None);
        }
        let mut w = ScalingWindow::default();
        for _ in 0..5 {
            assert_eq!(p.decide(&mut w, &load(1, 900.0), bounds(1, false)), None);
        }
        // Once cooled down, the samples already counted act at once.
        assert!(matches!(
            p.decide(&mut w, &load(1, 900.0), bounds(1, true)),
            Some(ScaleDecision::Out { to: 2, .. })
        ));
    }

    #[test]
    fn scales_in_only_when_one_node_fewer_stays_under_low_water() {
        let p = policy();
        let mut w = ScalingWindow::default();
        // 2 nodes, 80 req/s: one node would carry 80% > 50%: stay.
        for _ in 0..5 {
            assert_eq!(p.decide(&mut w, &load(2, 80.0), bounds(2, true)), None);
        }
        // 2 nodes, 30 req/s: one node would carry 30%: in, after 3 samples.
        assert_eq!(p.decide(&mut w, &load(2, 30.0), bounds(2, true)), None);
        assert_eq!(p.decide(&mut w, &load(2, 30.0), bounds(2, true)), None);
        assert!(matches!(
            p.decide(&mut w, &load(2, 30.0), bounds(2, true)),
            Some(ScaleDecision::In { to: 1, .. })
        ));
        // Never under min_nodes.
        let mut w = ScalingWindow::default();
        for _ in 0..5 {
            assert_eq!(p.decide(&mut w, &load(1, 0.0), bounds(1, true)), None);
        }
    }

    #[test]
    fn connections_count_when_they_have_a_target() {
        let p = ScalingPolicy {
            target_connections: 10,
            ..policy()
        };
        let mut w = ScalingWindow::default();
        let busy = Load {
            nodes: 1,
            requests_per_s: 0.0,
            active_connections: 25.0,
        };
        p.decide(&mut w, &busy, bounds(1, true));
        assert!(matches!(
            p.decide(&mut w, &busy, bounds(1, true)),
            Some(ScaleDecision::Out { .. })
        ));
    }

    #[test]
    fn spec_resolves_and_bounds() {
        let p = ScalingSpec {
            target_requests_per_s: Some(50),
            ..Default::default()
        }
        .resolve(ScalingPolicy::default())
        .unwrap();
        assert_eq!(p.target_requests_per_s, 50);
        assert_eq!(p.cooldown, 60);
        for bad in [
            ScalingSpec {
                low_water_percent: Some(100),
                ..Default::default()
            },
            ScalingSpec {
                scale_out_after: Some(0),
                ..Default::default()
            },
            ScalingSpec {
                target_requests_per_s: Some(0),
                target_connections: Some(0),
                ..Default::default()
            },
        ] {
            assert!(bad.resolve(ScalingPolicy::default()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn circuit_breaker_share() {
        assert!(!failover_paused(1, 1, 0.5), "a lone node fails over");
        assert!(!failover_paused(1, 2, 0.5));
        assert!(failover_paused(2, 2, 0.5));
        assert!(!failover_paused(2, 4, 0.5));
        assert!(failover_paused(3, 4, 0.5));
        assert!(!failover_paused(3, 4, 0.8));
    }
}
