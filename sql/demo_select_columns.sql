-- All rows, limited columns
SELECT AgentId, AgentAlias, AgentSecurityLevel FROM Agents ORDER BY AgentId
