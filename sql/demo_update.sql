-- Update attributes of exactly one agent: promote it and give it a new alias
UPDATE Agents SET AgentSecurityLevel = :level, AgentAlias = :alias WHERE AgentNameIndex = :name_index
