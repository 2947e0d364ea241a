//! Programs and libraries around the vhost-vf daemon.
