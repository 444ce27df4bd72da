//! Stock allocation for orders committed together: in arrival order, each order takes all of
//! its lines or none of them. An order that does not fit is OUT_OF_STOCK and takes nothing, so
//! a later, smaller order may still fit — exactly what the orders would have got one
//! transaction at a time, in the order they arrived.

use std::collections::BTreeMap;

use super::model::Line;

/// Units per product. A `BTreeMap` so that every batch writes its stock rows in product-id
/// order: two batches then lock shared rows in the same order and cannot deadlock on them.
pub type Units = BTreeMap<i64, i64>;

/// Per order (`short_on[i]` for `orders[i]`), `None` when it fits, else its first line that
/// does not; and what the orders that fit take together.
#[derive(Debug, PartialEq, Eq)]
pub struct Allocation {
    pub short_on: Vec<Option<Line>>,
    pub take: Units,
}

impl Allocation {
    pub fn fits(&self, order: usize) -> bool {
        self.short_on[order].is_none()
    }
}

/// Allocates `available` to `orders` in arrival order. A product missing from `available` has
/// no stock.
pub fn allocate(orders: &[&[Line]], available: &Units) -> Allocation {
    let mut left = available.clone();
    let mut take = Units::new();
    let short_on = orders
        .iter()
        .map(|lines| {
            let short = lines
                .iter()
                .find(|l| left.get(&l.product_id).is_none_or(|&n| n < l.quantity))
                .copied();
            if short.is_none() {
                for l in lines.iter() {
                    *left.entry(l.product_id).or_default() -= l.quantity;
                    *take.entry(l.product_id).or_default() += l.quantity;
                }
            }
            short
        })
        .collect();
    Allocation { short_on, take }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(product_id: i64, quantity: i64) -> Line {
        Line {
            index: 0,
            product_id,
            quantity,
        }
    }

    fn units(pairs: &[(i64, i64)]) -> Units {
        pairs.iter().copied().collect()
    }

    #[test]
    fn orders_take_in_arrival_order_until_the_stock_is_short() {
        let a = [line(1, 2)];
        let b = [line(1, 2)];
        let c = [line(1, 1)];
        let got = allocate(&[&a, &b, &c], &units(&[(1, 3)]));
        // b does not fit after a; c, smaller, still does.
        assert_eq!(got.short_on, [None, Some(b[0]), None]);
        assert_eq!(got.take, units(&[(1, 3)]));
    }

    #[test]
    fn an_order_short_on_one_line_takes_none_of_its_lines() {
        let a = [line(1, 1), line(2, 5)];
        let b = [line(1, 1)];
        let got = allocate(&[&a, &b], &units(&[(1, 1), (2, 4)]));
        assert_eq!(got.short_on, [Some(a[1]), None]);
        assert_eq!(got.take, units(&[(1, 1)]));
    }

    #[test]
    fn a_product_without_stock_fits_nobody() {
        let a = [line(7, 1)];
        let got = allocate(&[&a], &units(&[]));
        assert!(!got.fits(0));
        assert!(got.take.is_empty());
    }

    #[test]
    fn what_an_order_takes_is_gone_for_the_next() {
        // 10 units: 2, then 6, both fit (8 left after the first); then 3 does not (2 left).
        let (a, b, c) = ([line(1, 2)], [line(1, 6)], [line(1, 3)]);
        let got = allocate(&[&a, &b, &c], &units(&[(1, 10)]));
        assert_eq!(got.short_on, [None, None, Some(c[0])]);
        assert_eq!(got.take, units(&[(1, 8)]));
    }

    #[test]
    fn a_batch_takes_each_products_total_once() {
        let a = [line(1, 1), line(2, 1)];
        let b = [line(2, 3)];
        let got = allocate(&[&a, &b], &units(&[(1, 10), (2, 10)]));
        assert!(got.fits(0) && got.fits(1));
        assert_eq!(got.take, units(&[(1, 1), (2, 4)]));
    }
}
