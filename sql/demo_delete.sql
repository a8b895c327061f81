-- Delete exactly one agent, found by the blind index of its name
DELETE FROM Agents WHERE AgentNameIndex = :name_index
