//! Reading a service's metrics from its registry in tests.

use prometheus::Registry;

/// Sum of counter and gauge values of `name`, over series having a label
/// with value `label` (all series when `None`).
pub fn value(registry: &Registry, name: &str, label: Option<&str>) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .filter(|m| label.is_none_or(|l| m.get_label().iter().any(|pair| pair.value() == l)))
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}
