-- Limited rows (handlers and directors), all columns
SELECT * FROM Agents WHERE AgentSecurityLevel >= :min_level ORDER BY AgentId
