//! The table of controllers, and `--controllers` selection.
//!
//! Each controller is registered once, with its name and whether it runs by default. An
//! operator picks with a comma-separated list, as Kubernetes' `--controllers` flag:
//! `*` runs those on by default, `name` runs one (also one off by default), `-name` keeps
//! one from running; `-name` wins over `name` and `*`. An unknown name is an error that
//! lists the known ones.

use std::collections::BTreeSet;

use crate::informers::Informers;
use crate::manager::Context;
use crate::ControllerError;

/// Runs a controller for one term of leadership, until [`Context::stopped`].
pub type StartFn = fn(Context) -> futures::future::BoxFuture<'static, ()>;

/// Starts the informers a controller reads, so that a candidate waiting for the lock
/// keeps them warm and takes over without listing everything first.
pub type WarmFn = fn(&Informers);

/// One controller in the table.
#[derive(Debug, Clone, Copy)]
pub struct Descriptor {
    /// Its name in `--controllers`, logs and metrics.
    pub name: &'static str,
    /// Whether `*` includes it.
    pub on_by_default: bool,
    /// One line for `--help`.
    pub about: &'static str,
    /// Runs it.
    pub start: StartFn,
    /// Starts its informers.
    pub warm: WarmFn,
}

/// The controllers `spec` selects from `table` (see the module docs).
pub fn select(table: &[Descriptor], spec: &str) -> Result<BTreeSet<&'static str>, ControllerError> {
    let mut all = false;
    let mut on = BTreeSet::new();
    let mut off = BTreeSet::new();
    for item in spec.split(',').map(str::trim) {
        let (name, set) = match item {
            "" => {
                return Err(ControllerError::Config(format!(
                    "--controllers {spec:?}: an empty item (use '*' for the defaults)"
                )))
            }
            "*" => {
                all = true;
                continue;
            }
            _ => match item.strip_prefix('-') {
                Some(n) => (n, &mut off),
                None => (item, &mut on),
            },
        };
        let Some(d) = table.iter().find(|d| d.name == name) else {
            let known: Vec<&str> = table.iter().map(|d| d.name).collect();
            return Err(ControllerError::Config(format!(
                "--controllers: unknown controller {name:?} (known: {})",
                known.join(", ")
            )));
        };
        set.insert(d.name);
    }
    Ok(table
        .iter()
        .filter(|d| !off.contains(d.name) && (on.contains(d.name) || (all && d.on_by_default)))
        .map(|d| d.name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(_: Context) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    fn warm(_: &Informers) {}

    const TABLE: &[Descriptor] = &[
        Descriptor { name: "replicaset", on_by_default: true, about: "", start, warm },
        Descriptor { name: "deployment", on_by_default: true, about: "", start, warm },
        Descriptor { name: "bootstrap", on_by_default: false, about: "", start, warm },
    ];

    fn names(spec: &str) -> Vec<&'static str> {
        select(TABLE, spec).expect(spec).into_iter().collect()
    }

    #[test]
    fn star_runs_the_defaults_and_minus_takes_one_out() {
        assert_eq!(names("*"), vec!["deployment", "replicaset"]);
        assert_eq!(names("*,-deployment"), vec!["replicaset"]);
        assert_eq!(names("-deployment,*"), vec!["replicaset"]);
    }

    #[test]
    fn a_name_runs_one_even_if_off_by_default_and_minus_wins() {
        assert_eq!(names("bootstrap"), vec!["bootstrap"]);
        assert_eq!(names("*,bootstrap"), vec!["bootstrap", "deployment", "replicaset"]);
        assert_eq!(names("bootstrap,-bootstrap"), Vec::<&str>::new());
    }

    #[test]
    fn unknown_names_and_empty_items_are_refused_naming_them() {
        let e = select(TABLE, "*,-replicaseet").expect_err("refused").to_string();
        assert!(e.contains("\"replicaseet\"") && e.contains("known: replicaset, deployment, bootstrap"), "{e}");
        let e = select(TABLE, "*,,deployment").expect_err("refused").to_string();
        assert!(e.contains("empty item"), "{e}");
    }
}
