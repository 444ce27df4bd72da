//! Whole numbers in request bodies. JSON Schema, and so the OpenAPI document, counts `2.0` as
//! an integer, while serde's `i64` refuses it; clients generating JSON from the schema (or
//! from a language without integers) send it. A float is accepted only when it is a whole
//! number within `i64`; `1.5` stays a validation error naming the field.

use serde::{de, Deserializer};

/// For `#[serde(deserialize_with = "crate::http::integer::deserialize")]` on `i64` fields.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    deserializer.deserialize_any(WholeNumber)
}

struct WholeNumber;

/// 2^63 as a float: the first whole float that does not fit in an i64.
const I64_END: f64 = 9_223_372_036_854_775_808.0;

impl de::Visitor<'_> for WholeNumber {
    type Value = i64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a whole number between -2^63 and 2^63-1")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() == 0.0 && (-I64_END..I64_END).contains(&v) {
            Ok(v as i64)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct N {
        #[serde(deserialize_with = "super::deserialize")]
        n: i64,
    }

    fn parse(json: &str) -> Result<i64, serde_json::Error> {
        serde_json::from_str::<N>(json).map(|v| v.n)
    }

    #[test]
    fn whole_numbers_in_any_notation() {
        assert_eq!(parse(r#"{"n": 2}"#).unwrap(), 2);
        assert_eq!(parse(r#"{"n": 2.0}"#).unwrap(), 2);
        assert_eq!(parse(r#"{"n": -3e2}"#).unwrap(), -300);
        assert_eq!(parse(r#"{"n": -9223372036854775808}"#).unwrap(), i64::MIN);
    }

    #[test]
    fn everything_else_is_refused() {
        for bad in [
            r#"{"n": 1.5}"#,
            r#"{"n": 9223372036854775808}"#,
            r#"{"n": 9.3e18}"#,
            r#"{"n": "2"}"#,
            r#"{"n": null}"#,
            r#"{"n": true}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
