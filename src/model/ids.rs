//! Ids of stored objects. Each kind has its own type so a node id can never
//! be passed where an instance id is meant; on the wire and in SQLite they
//! are plain integers.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }
    };
}

id_type!(
    /// The row id of a project.
    ProjectId
);
id_type!(
    /// The row id of an instance (a load balancer).
    InstanceId
);
id_type!(
    /// The row id of an LB node; also names its process, pid file and VM.
    NodeId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_integers_on_the_wire() {
        assert_eq!(serde_json::to_string(&NodeId(7)).unwrap(), "7");
        assert_eq!(
            serde_json::from_str::<InstanceId>("12").unwrap(),
            InstanceId(12)
        );
        assert_eq!("3".parse::<ProjectId>().unwrap(), ProjectId(3));
        assert_eq!(NodeId(42).to_string(), "42");
    }
}
