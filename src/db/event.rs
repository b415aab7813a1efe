//! NOTIFY payloads, as sent by the triggers of `migrations/V2__notify.sql` (workers) and
//! `migrations/V4__routes.sql` (routes), on one channel.

use serde::{Deserialize, Deserializer};

use crate::ring::{Change, RouteRow, Row};

/// One notification on the `lb_workers` channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A row of `workers` changed.
    Worker(Change),
    /// A row of `routes` changed.
    Route(Change<RouteRow>),
    /// A statement ended (on either table): the changes received since the last `End` form
    /// one batch.
    End,
    /// A table was truncated (no row events): reread both.
    Truncate,
}

#[derive(Deserialize)]
struct Payload {
    /// `"routes"`, or absent for `workers` (V2's triggers name no table).
    table: Option<String>,
    op: String,
    id: Option<i64>,
    version: Option<i64>,
    prev: Option<i64>,
    pool: Option<String>,
    // workers
    address: Option<String>,
    weight: Option<i64>,
    // routes: `host` and `listener` are JSON null for SQL NULL, so absent (`None`) and
    // null (`Some(None)`) differ: a payload without them is refused.
    #[serde(default, deserialize_with = "present")]
    host: Option<Option<String>>,
    path_prefix: Option<String>,
    priority: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    listener: Option<Option<String>>,
}

/// A field that is present, even as null, is `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
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
        let mut p: Payload = serde_json::from_str(payload).map_err(|e| bad(&e.to_string()))?;
        match p.op.as_str() {
            "END" => return Ok(Event::End),
            "TRUNCATE" => return Ok(Event::Truncate),
            "INSERT" | "UPDATE" | "DELETE" => {}
            _ => return Err(bad("unknown op")),
        }
        let (op, prev, table) = (std::mem::take(&mut p.op), p.prev, p.table.take());
        match table.as_deref() {
            None | Some("workers") => wrap(&op, prev, worker_row(p)).map(Event::Worker),
            Some("routes") => wrap(&op, prev, route_row(p)).map(Event::Route),
            Some(_) => Err("unknown table"),
        }
        .map_err(bad)
    }
}

/// The change `op` makes to `row`.
fn wrap<R>(
    op: &str,
    prev: Option<i64>,
    row: Result<R, &'static str>,
) -> Result<Change<R>, &'static str> {
    let row = row?;
    Ok(match op {
        "INSERT" => Change::Insert(row),
        "UPDATE" => Change::Update {
            prev: prev.ok_or("no prev")?,
            row,
        },
        _ => Change::Delete(row),
    })
}

fn worker_row(p: Payload) -> Result<Row, &'static str> {
    let weight = p.weight.ok_or("no weight")?;
    Ok(Row {
        id: p.id.ok_or("no id")?,
        version: p.version.ok_or("no version")?,
        address: p.address.ok_or("no address")?,
        weight: u32::try_from(weight)
            .ok()
            .filter(|w| *w <= 10_000)
            .ok_or("weight out of range")?,
        pool: p.pool.ok_or("no pool")?,
    })
}

fn route_row(p: Payload) -> Result<RouteRow, &'static str> {
    let priority = p.priority.ok_or("no priority")?;
    Ok(RouteRow {
        id: p.id.ok_or("no id")?,
        version: p.version.ok_or("no version")?,
        host: p.host.ok_or("no host")?,
        path_prefix: p.path_prefix.ok_or("no path_prefix")?,
        pool: p.pool.ok_or("no pool")?,
        priority: i32::try_from(priority).map_err(|_| "priority out of range")?,
        listener: p.listener.ok_or("no listener")?,
    })
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
            Event::Worker(Change::Update {
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
            Ok(Event::Worker(Change::Insert(_)))
        ));
        assert!(matches!(
            Event::parse(
                r#"{"op":"DELETE","id":1,"version":3,"address":"a:1","weight":0,"pool":"p"}"#
            ),
            Ok(Event::Worker(Change::Delete(_)))
        ));
        assert_eq!(Event::parse(r#"{"op":"END","seq":4}"#).unwrap(), Event::End);
        assert_eq!(
            Event::parse(r#"{"op" : "TRUNCATE", "seq" : 5}"#).unwrap(),
            Event::Truncate
        );
    }

    /// As `routes_notify_row` sends them (jsonb's text: keys by length, then bytes).
    #[test]
    fn parses_route_payloads() {
        let e = Event::parse(
            r#"{"id": 2, "op": "UPDATE", "host": null, "pool": "default", "prev": 2, "table": "routes", "version": 3, "listener": "web", "priority": 3, "path_prefix": "/"}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            Event::Route(Change::Update {
                row: RouteRow {
                    id: 2,
                    version: 3,
                    host: None,
                    path_prefix: "/".into(),
                    pool: "default".into(),
                    priority: 3,
                    listener: Some("web".into()),
                },
                prev: 2
            })
        );
        let e = Event::parse(
            r#"{"id": 1, "op": "INSERT", "host": "*.example.com", "pool": "api", "table": "routes", "version": 1, "listener": null, "priority": -4, "path_prefix": "/v1"}"#,
        )
        .unwrap();
        assert_eq!(
            e,
            Event::Route(Change::Insert(RouteRow {
                id: 1,
                version: 1,
                host: Some("*.example.com".into()),
                path_prefix: "/v1".into(),
                pool: "api".into(),
                priority: -4,
                listener: None,
            }))
        );
        assert!(matches!(
            Event::parse(
                r#"{"id": 1, "op": "DELETE", "host": "api.example.com", "pool": "api", "table": "routes", "version": 1, "listener": null, "priority": 0, "path_prefix": "/v1"}"#
            ),
            Ok(Event::Route(Change::Delete(r))) if r.host.as_deref() == Some("api.example.com")
        ));
        // An explicit workers table is a workers event.
        assert!(matches!(
            Event::parse(
                r#"{"table":"workers","op":"INSERT","id":1,"version":3,"address":"a:1","weight":0,"pool":"p"}"#
            ),
            Ok(Event::Worker(Change::Insert(_)))
        ));
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
            // Routes: an unknown table, a route without prev on UPDATE, without host or
            // listener (null is not absent), with an out-of-range priority, a workers
            // payload labelled as a route.
            r#"{"table":"hosts","op":"INSERT","id":1,"version":2,"address":"a:1","weight":1,"pool":"p"}"#,
            r#"{"table":"routes","op":"UPDATE","id":1,"version":2,"host":null,"path_prefix":"/","pool":"p","priority":0,"listener":null}"#,
            r#"{"table":"routes","op":"INSERT","id":1,"version":2,"path_prefix":"/","pool":"p","priority":0,"listener":null}"#,
            r#"{"table":"routes","op":"INSERT","id":1,"version":2,"host":null,"path_prefix":"/","pool":"p","priority":0}"#,
            r#"{"table":"routes","op":"INSERT","id":1,"version":2,"host":null,"path_prefix":"/","pool":"p","priority":2147483648,"listener":null}"#,
            r#"{"table":"routes","op":"INSERT","id":1,"version":2,"host":null,"pool":"p","priority":0,"listener":null}"#,
            r#"{"table":"routes","op":"INSERT","id":1,"version":2,"address":"a:1","weight":1,"pool":"p"}"#,
            r#"{"table":"routes","op":"INSERT","id":1,"version":2,"host":7,"path_prefix":"/","pool":"p","priority":0,"listener":null}"#,
        ] {
            assert!(Event::parse(bad).is_err(), "{bad}");
        }
    }
}
