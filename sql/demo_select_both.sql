-- Limited columns and limited rows (field agents only)
SELECT AgentId, AgentName, AgentSecurityLevel FROM Agents WHERE AgentSecurityLevel <= :max_level ORDER BY AgentId
