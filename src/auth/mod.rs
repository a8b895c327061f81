//! Who is logged in and what they may do: the session file and the roles.

pub mod roles;
pub mod session;
