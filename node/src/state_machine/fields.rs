//! Rules the state machines apply to their fields: a partial update
//! changes only the fields it gives, and counters never move back.

/// Fails naming the first of `counters` (what it counts, its value
/// before, its value after) that moved back.
pub fn check_none_moved_back<T: PartialOrd + std::fmt::Display>(
    counters: impl IntoIterator<Item = (&'static str, T, T)>,
) -> Result<(), String> {
    for (what, before, after) in counters {
        if after < before {
            return Err(format!("{what} moved back from {before} to {after}"));
        }
    }
    Ok(())
}

/// A partial update's field: `field` takes the update's value when the
/// update gives one, and stays as it is otherwise.
pub fn set_if_given<T: Clone>(field: &mut T, given: &Option<T>) {
    if let Some(value) = given {
        *field = value.clone();
    }
}
