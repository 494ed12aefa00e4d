//! The model's enums and ids as SQLite values: enums are stored as their
//! API text, ids as integers. A value this lbd does not know reads as an
//! error instead of a silent default.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::model::{
    EventKind, InstanceId, NodeId, NodeState, OperatingStatus, ProjectId, ProvisioningStatus, Role,
};

macro_rules! text_enum {
    ($ty:ty, $what:literal) => {
        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $ty {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                <$ty>::parse(text).ok_or_else(|| {
                    FromSqlError::Other(format!(concat!("unknown ", $what, " {:?}"), text).into())
                })
            }
        }
    };
}

text_enum!(NodeState, "node state");
text_enum!(OperatingStatus, "operating status");
text_enum!(ProvisioningStatus, "provisioning status");
text_enum!(EventKind, "event kind");
text_enum!(Role, "role");
text_enum!(crate::model::mapping::MappingSource, "mapping source");

macro_rules! integer_id {
    ($ty:ident) => {
        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.0))
            }
        }

        impl FromSql for $ty {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value.as_i64().map($ty)
            }
        }
    };
}

integer_id!(ProjectId);
integer_id!(InstanceId);
integer_id!(NodeId);

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn enums_and_ids_round_trip_through_sqlite() {
        let c = Connection::open_in_memory().unwrap();
        let (state, kind, id): (NodeState, EventKind, NodeId) = c
            .query_row(
                "SELECT ?1, ?2, ?3",
                rusqlite::params![NodeState::Failed, EventKind::Failover, NodeId(9)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (state, kind, id),
            (NodeState::Failed, EventKind::Failover, NodeId(9))
        );
        let bad = c.query_row("SELECT 'exploded'", [], |r| r.get::<_, NodeState>(0));
        assert!(bad.is_err());
    }
}
