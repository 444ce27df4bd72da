//! The order as stored and served, and the validated create request.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{config::OrderLimits, error::FieldError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Created,
    Cancelled,
    Completed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Created => "CREATED",
            OrderStatus::Cancelled => "CANCELLED",
            OrderStatus::Completed => "COMPLETED",
        }
    }
}

/// Read from the `status` column (a VARCHAR guarded by a CHECK constraint).
impl TryFrom<String> for OrderStatus {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "CREATED" => Ok(OrderStatus::Created),
            "CANCELLED" => Ok(OrderStatus::Cancelled),
            "COMPLETED" => Ok(OrderStatus::Completed),
            _ => Err(format!("unknown order status {s:?}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: i64,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_amount: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub id: i64,
    pub user_id: i64,
    #[sqlx(try_from = "String")]
    pub status: OrderStatus,
    pub total_amount: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl OrderRow {
    pub fn with_items(self, items: Vec<OrderItem>) -> Order {
        Order {
            id: self.id,
            status: self.status,
            items,
            total_amount: self.total_amount,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrderRequest {
    /// One line per product, at most ORDER_MAX_ITEMS (50 by default).
    #[schema(min_items = 1, max_items = 50)]
    pub items: Vec<LineRequest>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LineRequest {
    #[schema(example = 1, minimum = 1)]
    #[serde(deserialize_with = "crate::http::integer::deserialize")]
    pub product_id: i64,
    /// 1 to ORDER_MAX_QUANTITY (1000 by default).
    #[schema(example = 2, minimum = 1, maximum = 1000)]
    #[serde(deserialize_with = "crate::http::integer::deserialize")]
    pub quantity: i64,
}

/// A line that passed validation: positive ids, bounded quantity, one line per product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// Position in the request, for error details.
    pub index: usize,
    pub product_id: i64,
    pub quantity: i64,
}

/// Validates the request and returns its lines ordered by product id: every transaction
/// locks stock rows in that one order, so two multi-item orders cannot deadlock each other.
pub fn validate(
    req: &CreateOrderRequest,
    limits: OrderLimits,
) -> Result<Vec<Line>, Vec<FieldError>> {
    let mut errors = Vec::new();
    if req.items.is_empty() {
        errors.push(FieldError::new("items", "must contain at least one item"));
    }
    if req.items.len() > limits.max_items {
        errors.push(FieldError::new(
            "items",
            format!("must contain at most {} items", limits.max_items),
        ));
        return Err(errors);
    }
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for (i, item) in req.items.iter().enumerate() {
        if item.product_id < 1 {
            errors.push(FieldError::new(
                format!("items[{i}].productId"),
                "must be >= 1",
            ));
        } else if let Some(first) = seen.insert(item.product_id, i) {
            errors.push(FieldError::new(
                format!("items[{i}].productId"),
                format!("duplicates items[{first}]; send one line per product"),
            ));
        }
        if !(1..=limits.max_quantity).contains(&item.quantity) {
            errors.push(FieldError::new(
                format!("items[{i}].quantity"),
                format!("must be between 1 and {}", limits.max_quantity),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut lines: Vec<Line> = req
        .items
        .iter()
        .enumerate()
        .map(|(index, it)| Line {
            index,
            product_id: it.product_id,
            quantity: it.quantity,
        })
        .collect();
    lines.sort_by_key(|l| l.product_id);
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: OrderLimits = OrderLimits {
        max_items: 3,
        max_quantity: 10,
    };

    fn req(items: &[(i64, i64)]) -> CreateOrderRequest {
        CreateOrderRequest {
            items: items
                .iter()
                .map(|&(product_id, quantity)| LineRequest {
                    product_id,
                    quantity,
                })
                .collect(),
        }
    }

    #[test]
    fn lines_come_back_sorted_by_product() {
        let lines = validate(&req(&[(9, 1), (2, 3)]), LIMITS).unwrap();
        assert_eq!(
            lines.iter().map(|l| l.product_id).collect::<Vec<_>>(),
            [2, 9]
        );
        assert_eq!(lines[0].index, 1);
    }

    #[test]
    fn duplicates_bounds_and_emptiness_are_refused() {
        let fields = |r| {
            validate(&r, LIMITS)
                .unwrap_err()
                .into_iter()
                .map(|e| e.field)
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(req(&[])), ["items"]);
        assert_eq!(fields(req(&[(1, 1), (1, 2)])), ["items[1].productId"]);
        assert_eq!(
            fields(req(&[(1, 0), (0, 11)])),
            [
                "items[0].quantity",
                "items[1].productId",
                "items[1].quantity"
            ]
        );
        assert_eq!(fields(req(&[(1, 1), (2, 1), (3, 1), (4, 1)])), ["items"]);
    }
}
