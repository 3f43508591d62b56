//! `rewire import`: ContainerPilot and consul-template setups translated to rewire.toml.

pub mod gotmpl;
