//! The order-tracking demo's data: what the page sends to Kafka topic
//! `orders` and what the simulator writes to `order-results`, plus the pure
//! order → status-steps plan.

use serde::{Deserialize, Serialize};

/// The status steps an order goes through by default.
pub const DEFAULT_STATUSES: [&str; 4] = ["RECEIVED", "PAYMENT_OK", "PACKED", "SHIPPED"];

/// An order as placed by the page (`SEND /app/orders`, `kafka-key` =
/// `orderId`). The customer is **not** taken from the body: it is the
/// record's `stomp-user` header, which the broker stamps with the
/// authenticated user of the SEND (see [`order_from_record`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// Client-chosen id; the Kafka key of the order and of its updates.
    pub order_id: String,
    /// The customer (the STOMP user who sent the order, from `stomp-user`):
    /// the route `/user/{json:/customerId}/queue/order-updates` delivers to
    /// them only. A `customerId` in the body is ignored.
    #[serde(default)]
    pub customer_id: String,
    /// Whatever the page put in the basket (passed through untouched).
    #[serde(default)]
    pub items: Vec<serde_json::Value>,
}

/// One status step, written to `order-results` keyed by `orderId`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderUpdate {
    /// The order.
    pub order_id: String,
    /// Its customer (routing key of the broker's route).
    pub customer_id: String,
    /// `RECEIVED`, `PAYMENT_OK`, …
    pub status: String,
    /// 1-based position of `status` in the plan.
    pub step: u32,
    /// How many steps the plan has (the page draws progress with it).
    pub total_steps: u32,
    /// When the step happened, milliseconds since the Unix epoch.
    pub at: u64,
}

/// Why an `orders` record is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderProblem {
    /// Not JSON, or not an order.
    NotAnOrder(String),
    /// `orderId` or `customerId` cannot be used as a destination segment
    /// (1–200 of `[A-Za-z0-9._~@+=-]`, no leading/trailing `.`, no `..`).
    BadId(&'static str),
    /// The record has no `stomp-user` header: not sent by an authenticated
    /// STOMP user, so there is nobody to place the order for.
    NoUser,
}

/// Kafka header the broker stamps with the authenticated user of a SEND
/// (clients cannot set it: the broker drops client headers named `stomp-*`).
pub const USER_HEADER: &str = "stomp-user";

/// The order in an `orders` record: the value's `orderId` and `items`, and
/// as customer the record's `stomp-user` header (`stomp_user`), never the
/// value's `customerId` — a client could put anyone's name there.
pub fn order_from_record(value: &[u8], stomp_user: Option<&[u8]>) -> Result<Order, OrderProblem> {
    let user = stomp_user
        .and_then(|u| std::str::from_utf8(u).ok())
        .filter(|u| !u.is_empty())
        .ok_or(OrderProblem::NoUser)?;
    let mut order: Order =
        serde_json::from_slice(value).map_err(|e| OrderProblem::NotAnOrder(e.to_string()))?;
    order.customer_id = user.to_owned();
    check_order(order)
}

/// Parses and checks an order whose `customerId` is in the value (tests,
/// tools; the simulator uses [`order_from_record`]).
pub fn parse_order(value: &[u8]) -> Result<Order, OrderProblem> {
    let order: Order =
        serde_json::from_slice(value).map_err(|e| OrderProblem::NotAnOrder(e.to_string()))?;
    check_order(order)
}

fn check_order(order: Order) -> Result<Order, OrderProblem> {
    if !is_segment(&order.order_id) {
        return Err(OrderProblem::BadId("orderId"));
    }
    if !is_segment(&order.customer_id) {
        return Err(OrderProblem::BadId("customerId"));
    }
    Ok(order)
}

/// The update for step `step` of `order`.
pub fn update(order: &Order, status: &str, step: u32, total_steps: u32, at: u64) -> OrderUpdate {
    OrderUpdate {
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        status: status.to_owned(),
        step,
        total_steps,
        at,
    }
}

/// What the bridge's templates accept as one inserted value.
pub fn is_segment(s: &str) -> bool {
    (1..=200).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~@+=-".contains(&b))
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_order_accepts_the_pages_json() {
        let o =
            parse_order(br#"{"orderId":"alice-1","customerId":"alice","items":[{"sku":"tea"}]}"#)
                .unwrap();
        assert_eq!(o.order_id, "alice-1");
        assert_eq!(o.customer_id, "alice");
        assert_eq!(o.items.len(), 1);
    }

    #[test]
    fn parse_order_rejects_ids_the_route_cannot_use() {
        assert_eq!(
            parse_order(br#"{"orderId":"1","customerId":"a/b"}"#),
            Err(OrderProblem::BadId("customerId"))
        );
        assert_eq!(
            parse_order(br#"{"orderId":"..","customerId":"a"}"#),
            Err(OrderProblem::BadId("orderId"))
        );
        assert!(matches!(
            parse_order(b"not json"),
            Err(OrderProblem::NotAnOrder(_))
        ));
    }

    #[test]
    fn order_from_record_takes_the_customer_from_stomp_user_not_the_body() {
        let o = order_from_record(
            br#"{"orderId":"o1","customerId":"alice","items":[]}"#,
            Some(b"mallory"),
        )
        .unwrap();
        assert_eq!(o.customer_id, "mallory");
        let o = order_from_record(br#"{"orderId":"o2"}"#, Some(b"bob")).unwrap();
        assert_eq!(o.customer_id, "bob");
        assert_eq!(
            order_from_record(br#"{"orderId":"o3","customerId":"alice"}"#, None),
            Err(OrderProblem::NoUser)
        );
        assert_eq!(
            order_from_record(br#"{"orderId":"o3"}"#, Some(b"")),
            Err(OrderProblem::NoUser)
        );
        assert_eq!(
            order_from_record(br#"{"orderId":"o4"}"#, Some(b"a/b")),
            Err(OrderProblem::BadId("customerId"))
        );
    }

    #[test]
    fn update_serializes_with_the_documented_field_names() {
        let o = parse_order(br#"{"orderId":"o1","customerId":"bob"}"#).unwrap();
        let v = serde_json::to_value(update(&o, "PACKED", 3, 4, 1000)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"orderId":"o1","customerId":"bob","status":"PACKED","step":3,"totalSteps":4,"at":1000})
        );
    }
}
