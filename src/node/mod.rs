//! Node tooling: the commands that install apilb on a node and point the node's clients at
//! it (`apilb kubeconfig`, `apilb kubeadm post-join`, `apilb manifest`, and reading an
//! existing kubespray proxy's configuration).
//!
//! # What this part owns and must not do
//!
//! It reads and writes files on the node and prints what it did. It may use `config` and
//! `util`, and the admin client to wait for readiness; it never imports the data plane
//! (`proxy`) or the control plane (health, discovery): installing apilb does not run it.

pub mod kubeadm;
pub mod kubeconfig;
pub mod kubespray;
pub mod manifest;
