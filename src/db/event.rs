//! NOTIFY payloads, as sent by the triggers of `migrations/V2__notify.sql`.

use serde::Deserialize;

use crate::ring::{Change, Row};

/// One notification on the `lb_workers` channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A row changed.
    Change(Change),
    /// A statement ended: the changes received since the last `End` form one batch.
    End,
    /// The table was truncated (no row events): reread it.
    Truncate,
}

#[derive(Deserialize)]
struct Payload {
    op: String,
    id: Option<i64>,
    version: Option<i64>,
    address: Option<String>,
    weight: Option<i64>,
    pool: Option<String>,
    prev: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
#[error("unparsable payload ({reason}): {payload:.200}")]
pub struct BadPayload {
    pub reason: String,
    pub payload: String,
}

impl Event {
    pub fn parse(payload: &str) -> Result<Event, BadPayload> {
        let bad = |reason: &str| BadPayload {
            reason: reason.to_string(),
            payload: payload.to_string(),
        };
        let p: Payload = serde_json::from_str(payload).map_err(|e| bad(&e.to_string()))?;
        let prev = p.prev;
        let row = |p: Payload| -> Result<Row, BadPayload> {
            let weight = p.weight.ok_or_else(|| bad("no weight"))?;
            Ok(Row {
                id: p.id.ok_or_else(|| bad("no id"))?,
                version: p.version.ok_or_else(|| bad("no version"))?,
                address: p.address.ok_or_else(|| bad("no address"))?,
                weight: u32::try_from(weight)
                    .ok()
                    .filter(|w| *w <= 10_000)
                    .ok_or_else(|| bad("weight out of range"))?,
                pool: p.pool.ok_or_else(|| bad("no pool"))?,
            })
        };
        match p.op.as_str() {
            "INSERT" => Ok(Event::Change(Change::Insert(row(p)?))),
            "UPDATE" => Ok(Event::Change(Change::Update {
                prev: prev.ok_or_else(|| bad("no prev"))?,
                row: row(p)?,
            })),
            "DELETE" => Ok(Event::Change(Change::Delete(row(p)?))),
            "END" => Ok(Event::End),
            "TRUNCATE" => Ok(Event::Truncate),
            _ => Err(bad("unknown op")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trigger_payloads() {
        let e = Event::parse(
            r#"{"op" : "UPDATE", "id" : 2, "version" : 8, "address" : "[::1]:8000", "weight" : 2, "pool" : "default", "prev" : 5}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            Event::Change(Change::Update {
                row: Row {
                    id: 2,
                    address: "[::1]:8000".into(),
                    weight: 2,
                    pool: "default".into(),
                    version: 8
                },
                prev: 5
            })
        );
        assert!(matches!(
            Event::parse(
                r#"{"op":"INSERT","id":1,"version":3,"address":"a:1","weight":0,"pool":"p"}"#
            ),
            Ok(Event::Change(Change::Insert(_)))
        ));
        assert!(matches!(
            Event::parse(
                r#"{"op":"DELETE","id":1,"version":3,"address":"a:1","weight":0,"pool":"p"}"#
            ),
            Ok(Event::Change(Change::Delete(_)))
        ));
        assert_eq!(Event::parse(r#"{"op":"END","seq":4}"#).unwrap(), Event::End);
        assert_eq!(
            Event::parse(r#"{"op" : "TRUNCATE", "seq" : 5}"#).unwrap(),
            Event::Truncate
        );
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        for bad in [
            "",
            "not json",
            r#"{"op":"UPSERT","id":1}"#,
            r#"{"op":"UPDATE","id":1,"version":2,"address":"a:1","pool":"p","prev":1}"#,
            r#"{"op":"UPDATE","id":1,"version":2,"address":"a:1","weight":1,"pool":"p"}"#,
            r#"{"op":"UPDATE","id":1,"version":2,"address":"a:1","weight":-1,"pool":"p","prev":1}"#,
            r#"{"op":"INSERT","id":"x","version":2,"address":"a:1","weight":1,"pool":"p"}"#,
        ] {
            assert!(Event::parse(bad).is_err(), "{bad}");
        }
    }
}
