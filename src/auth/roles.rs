//! Roles by security level: 1-2 field agent, 3 handler, 4-5
//! director. Directors add agents, export wire keys and read the Boss's inbox;
//! everyone sees agents at or below their own level and may send.

/// The role a security level grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    FieldAgent,
    Handler,
    Director,
}

impl Role {
    pub fn of_level(level: u8) -> Role {
        match level {
            0..=2 => Role::FieldAgent,
            3 => Role::Handler,
            _ => Role::Director,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::FieldAgent => "field agent",
            Role::Handler => "handler",
            Role::Director => "director",
        }
    }
}

/// Something a role may or may not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    AddAgent,
    ExportKey,
    /// Delete, re-level or revoke agents, and read the audit log.
    ManageAgents,
    ReadInbox,
    ListAgents,
    Send,
    /// `key status`, `key rotate`, `key retire`.
    ManageKeys,
    /// `order`: queue orders for agents at or below one's level.
    GiveOrders,
}

impl Action {
    pub fn describe(self) -> &'static str {
        match self {
            Action::AddAgent => "add agents",
            Action::ExportKey => "export wire keys",
            Action::ManageAgents => "delete, re-level or revoke agents, or read the audit log",
            Action::ReadInbox => "read the Boss's inbox",
            Action::ListAgents => "list agents",
            Action::Send => "send to the Boss",
            Action::ManageKeys => "see, rotate or retire the master-key epochs",
            Action::GiveOrders => "give orders",
        }
    }
}

/// True when an agent at `level` may do `action`.
pub fn allows(level: u8, action: Action) -> bool {
    match action {
        Action::AddAgent
        | Action::ExportKey
        | Action::ManageAgents
        | Action::ReadInbox
        | Action::ManageKeys
        | Action::GiveOrders => Role::of_level(level) == Role::Director,
        Action::ListAgents | Action::Send => true,
    }
}

/// True when a viewer at `viewer_level` may see an agent at `agent_level`.
pub fn may_see(viewer_level: u8, agent_level: u8) -> bool {
    agent_level <= viewer_level
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_roles() {
        assert_eq!(Role::of_level(1), Role::FieldAgent);
        assert_eq!(Role::of_level(2), Role::FieldAgent);
        assert_eq!(Role::of_level(3), Role::Handler);
        assert_eq!(Role::of_level(4), Role::Director);
        assert_eq!(Role::of_level(5), Role::Director);
    }

    #[test]
    fn only_directors_add_and_read_inbox() {
        for level in 1..=5 {
            let director = level >= 4;
            assert_eq!(allows(level, Action::AddAgent), director);
            assert_eq!(allows(level, Action::ReadInbox), director);
            assert_eq!(allows(level, Action::ManageAgents), director);
            assert!(allows(level, Action::ListAgents));
            assert!(allows(level, Action::Send));
        }
        assert!(may_see(3, 3) && may_see(3, 1) && !may_see(3, 4));
    }
}
